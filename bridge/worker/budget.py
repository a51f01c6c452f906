"""Per-endpoint, per-operation request budgets shared by every worker through Redis.

A route's budget "N requests per W seconds" is a sliding log in Redis: a request may
go when fewer than 90 % of N requests went in the last W + 3 seconds. The margins
cover the time between taking a slot and the request reaching the endpoint, so a
fleet of workers stays under the platform's limit instead of meeting its 429s, while a
burst of up to 0.9·N requests still goes at once. One Lua call per request, timed by
Redis' own clock, so every process agrees. :func:`budget_trace_config` makes every
request of the worker's HTTP session wait for its slot.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
from redis.asyncio import Redis

_TAKE = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, math.ceil((tonumber(oldest[2]) + window - now) / 1000))
"""

_OPERATION = re.compile(
    r"/(?P<endpoint>[^/]+)/(?P<op>run|runsync|status|status-sync|stream|cancel|purge-queue)"
    r"(?:/[^/]*)?$"
)


@dataclass(frozen=True)
class Limit:
    """A budget of ``requests`` per ``window`` seconds."""

    requests: int
    window: float

    @property
    def slots(self) -> int:
        """Requests we allow ourselves per :attr:`span` (90 %, at least one)."""
        return max(1, int(self.requests * 0.9))

    @property
    def span_us(self) -> int:
        """The window we count over, in microseconds: three seconds longer, for requests
        that reach the endpoint late (a busy event loop, a garbage collection; with
        10,000 jobs in flight a one-second margin still let a few hundred 429s through)."""
        return int((self.window + 3.0) * 1_000_000)


class Budgets:
    """Token buckets in Redis, one per (endpoint, operation) with a configured limit.

    Args:
        redis: the shared Redis.
        limits: ``{endpoint_id: {operation: Limit}}``.
        prefix: Redis key prefix.
        sleep: injectable for tests.
    """

    def __init__(
        self,
        redis: Redis,
        limits: dict[str, dict[str, Limit]],
        prefix: str = "bridge",
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.limits = limits
        self.prefix = prefix
        self.waited = 0.0
        self._take = redis.register_script(_TAKE)
        self._sleep = sleep
        self._locks: dict[str, asyncio.Lock] = {}

    async def acquire(self, endpoint_id: str, operation: str) -> float:
        """Wait for a token; returns the seconds waited (0 when there is no limit).

        Within a process the waiters of one budget queue up behind a lock, first come
        first served: only the head asks Redis, so a thousand waiting requests cost one
        Lua call per token, not one per waiter per wake-up.
        """
        limit = self.limits.get(endpoint_id, {}).get(operation)
        if limit is None:
            return 0.0
        key = f"{self.prefix}:budget:{endpoint_id}:{operation}"
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        waited = 0.0
        async with lock:
            while True:
                token = random.getrandbits(48)
                args = [limit.slots, limit.span_us, token]
                wait_ms = int(await self._take(keys=[key], args=args))
                if wait_ms <= 0:
                    self.waited += waited
                    return waited
                pause = wait_ms / 1000
                waited += pause
                await self._sleep(pause)


def classify(path: str) -> tuple[str, str] | None:
    """``(endpoint_id, operation)`` of a queue API path, or None for other paths."""
    match = _OPERATION.search(path)
    return (match["endpoint"], match["op"]) if match else None


def budget_trace_config(budgets: Budgets) -> aiohttp.TraceConfig:
    """An aiohttp trace config that makes every queue API request wait for its token."""

    async def on_request_start(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        found = classify(params.url.path)
        if found is not None:
            await budgets.acquire(*found)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return trace
