"""A circuit breaker per endpoint, shared by every worker through Redis.

``closed`` → (``threshold`` consecutive failures) → ``open`` → (``open_s`` later)
``half_open``: one request, the probe, may try (the others keep waiting); its success
closes the breaker, its failure opens it again.

Failures are what the endpoint did wrong after the client's own retries: connection
errors, timeouts, 5xx, an unreachable ``/health``. Successes are any answer it gave.
While a breaker is open the bridge stops taking that route's work: the JSON door leaves
its entries unacknowledged in the stream (they are read again later), ``bridge.run``
hands its message back to the broker with a delay, and requests already accepted wait
before submitting instead of burning their retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bridge.core import metrics
from bridge.core.keys import BREAKER_TTL_S, Keys
from bridge.core.scripts import NamedScript, text

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

RECORD = NamedScript(
    """
local state = redis.call('HGET', breaker, 'state') or 'closed'
local opened = tonumber(redis.call('HGET', breaker, 'opened') or '0')
local now = tonumber(now)
if state == 'open' and now - opened >= tonumber(open_s) then
  state = 'half_open'
end
if outcome == 'success' then
  if state ~= 'open' then
    redis.call('HSET', breaker, 'state', 'closed', 'failures', 0)
    state = 'closed'
  end
else
  local failures = redis.call('HINCRBY', breaker, 'failures', 1)
  if state == 'half_open' or (state == 'closed' and failures >= tonumber(threshold)) then
    redis.call('HSET', breaker, 'state', 'open', 'opened', now)
    state = 'open'
  end
end
redis.call('EXPIRE', breaker, ttl)
return state
""",
    keys=("breaker",),
    args=("outcome", "now", "threshold", "open_s", "ttl"),
)


@dataclass(frozen=True)
class BreakerState:
    state: str
    failures: int
    opened_at: float

    @classmethod
    def read(cls, raw: dict[Any, Any], *, open_s: float, now: float) -> BreakerState:
        """From the breaker's hash as stored (an open breaker past ``open_s`` reads as
        half-open); shared by the workers and the CLI."""
        fields = {text(k): text(v) for k, v in raw.items()}
        state = fields.get("state", CLOSED)
        opened = float(fields.get("opened", 0) or 0)
        if state == OPEN and now - opened >= open_s:
            state = HALF_OPEN
        return cls(state, int(fields.get("failures", 0) or 0), opened)

    def retry_in(self, open_s: float, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 if not open)."""
        return max(0.0, self.opened_at + open_s - now) if self.state == OPEN else 0.0


class Breakers:
    """Reads and feeds the breakers; reads are cached for ``cache_s`` per process."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        threshold: int = 10,
        open_s: float = 30.0,
        cache_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.threshold = threshold
        self.open_s = open_s
        self.cache_s = cache_s
        self._clock = clock
        self._record = RECORD.bind(redis)
        self._cache: dict[str, tuple[float, BreakerState]] = {}

    async def record(self, endpoint_id: str, ok: bool) -> str:
        """Feed one outcome; returns the breaker's state after it."""
        state = text(
            await self._record(
                breaker=self.keys.breaker(endpoint_id),
                outcome="success" if ok else "failure",
                now=self._clock(),
                threshold=self.threshold,
                open_s=self.open_s,
                ttl=BREAKER_TTL_S,
            )
        )
        self._cache.pop(endpoint_id, None)
        metrics.BREAKER.labels(endpoint_id).set(metrics.BREAKER_VALUES.get(state, 0))
        return state

    async def get(self, endpoint_id: str) -> BreakerState:
        now = self._clock()
        cached = self._cache.get(endpoint_id)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        raw = await self.redis.hgetall(self.keys.breaker(endpoint_id))
        result = BreakerState.read(raw, open_s=self.open_s, now=now)
        self._cache[endpoint_id] = (now, result)
        return result

    async def try_probe(self, endpoint_id: str) -> bool:
        """In ``half_open``: become the one probe (for at most ``open_s``)."""
        taken = await self.redis.set(
            self.keys.breaker_probe(endpoint_id), "1", nx=True, px=int(self.open_s * 1000)
        )
        return bool(taken)
