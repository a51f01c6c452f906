"""Per-endpoint, per-operation request budgets shared by every worker through Redis.

A route's budget "N requests per W seconds" is a sliding log in Redis: a request may
go when fewer than 90 % of N requests went in the last W + 3 seconds. The margins
cover the time between taking a slot and the request reaching the endpoint, so a
fleet of workers stays under the platform's limit instead of meeting its 429s, while a
burst of up to 0.9·N requests still goes at once. One Lua call per request, timed by
Redis' own clock, so every process agrees. :meth:`Budgets.hooks` makes every request of
the worker's endpoint clients wait for its slot (the client tells the hook the request's
operation and endpoint: nothing is guessed from a URL).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bridge.core.keys import Keys
from bridge.core.scripts import NamedScript
from bridge.runpod import Hooks
from bridge.runpod._protocol import Request as WireRequest

TAKE = NamedScript(
    """
local limit, wanted = tonumber(limit), tonumber(wanted)
local window = tonumber(window_us)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- Times as integer text: a Lua number becomes text with 14 digits (a float's printf,
-- the costliest part of this script, and it rounds microseconds away).
local stamp = t[1] .. string.sub('00000' .. t[2], -6)
redis.call('ZREMRANGEBYSCORE', budget, '-inf', string.format('%d', now - window))
local free = limit - redis.call('ZCARD', budget)
if free > 0 then
  local granted = math.min(free, wanted)
  local members = {}
  local name = stamp .. ':' .. token .. ':'
  for i = 1, granted do
    members[#members + 1] = stamp
    members[#members + 1] = name .. i
  end
  redis.call('ZADD', budget, unpack(members))
  redis.call('PEXPIRE', budget, math.ceil(window / 1000) + 1000)
  return {granted, 0}
end
local oldest = redis.call('ZRANGE', budget, 0, 0, 'WITHSCORES')
return {0, math.max(1, math.ceil((tonumber(oldest[2]) + window - now) / 1000))}
""",
    keys=("budget",),
    args=("limit", "window_us", "wanted", "token"),
)
"""Take up to ``wanted`` slots; answers ``{granted, wait_ms}``."""

TOKEN_LIFE_S = 1.0
"""Slots taken ahead are used within this long or dropped: a slot is counted from when it
was taken, and the window's three-second margin covers only so much delay."""


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
    def chunk(self) -> int:
        """Slots one Lua call takes ahead (1 % of the budget, at most 16): a busy process
        asks Redis once per this many requests, not once per request."""
        return max(1, min(16, self.slots // 100))

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
        keys: the key schema.
        sleep: injectable for tests.
    """

    def __init__(
        self,
        redis: Redis,
        limits: dict[str, dict[str, Limit]],
        keys: Keys,
        sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.keys = keys
        self.waited = 0.0
        self._take = TAKE.bind(redis)
        self._sleep = sleep
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._ahead: dict[str, tuple[int, float]] = {}  # key -> (slots, usable until)
        self.calls = 0
        """Lua calls made (the cost the chunks save)."""

    async def acquire(self, endpoint_id: str, operation: str) -> float:
        """Wait for a token; returns the seconds waited (0 when there is no limit).

        Within a process the waiters of one budget queue up behind a lock, first come
        first served: only the head asks Redis, and it takes up to :attr:`Limit.chunk`
        slots at once for the ones behind it (usable for :data:`TOKEN_LIFE_S`).
        """
        limit = self.limits.get(endpoint_id, {}).get(operation)
        if limit is None:
            return 0.0
        key = self.keys.budget(endpoint_id, operation)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        waited = 0.0
        async with lock:
            while True:
                ahead, until = self._ahead.get(key, (0, 0.0))
                if ahead > 0 and self._clock() < until:
                    self._ahead[key] = (ahead - 1, until)
                    self.waited += waited
                    return waited
                self.calls += 1
                granted, wait_ms = await self._take(
                    budget=key,
                    limit=limit.slots,
                    window_us=limit.span_us,
                    wanted=limit.chunk,
                    token=random.getrandbits(48),
                )
                if int(granted) > 0:
                    self._ahead[key] = (int(granted) - 1, self._clock() + TOKEN_LIFE_S)
                    self.waited += waited
                    return waited
                pause = int(wait_ms) / 1000
                waited += pause
                await self._sleep(pause)

    async def try_acquire(self, endpoint_id: str, operation: str) -> bool:
        """Take one slot now if there is one (never waits): for work that is better
        skipped than late (a scheduled purge)."""
        limit = self.limits.get(endpoint_id, {}).get(operation)
        if limit is None:
            return True
        self.calls += 1
        granted, _ = await self._take(
            budget=self.keys.budget(endpoint_id, operation),
            limit=limit.slots,
            window_us=limit.span_us,
            wanted=1,
            token=random.getrandbits(48),
        )
        return int(granted) > 0

    async def _before(self, request: WireRequest) -> None:
        await self.acquire(request.endpoint_id, request.op)

    def hooks(self) -> Hooks:
        """Client hooks that make every request wait for its operation's budget."""
        return Hooks(before=(self._before,))
