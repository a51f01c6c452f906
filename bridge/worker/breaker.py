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

from redis.asyncio import Redis

from bridge.worker import metrics

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

_RECORD = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened') or '0')
local now = tonumber(ARGV[2])
if state == 'open' and now - opened >= tonumber(ARGV[4]) then
  state = 'half_open'
end
if ARGV[1] == 'success' then
  if state ~= 'open' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
    state = 'closed'
  end
else
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  if state == 'half_open' or (state == 'closed' and failures >= tonumber(ARGV[3])) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened', ARGV[2])
    state = 'open'
  end
end
redis.call('EXPIRE', KEYS[1], 86400)
return state
"""


@dataclass(frozen=True)
class BreakerState:
    state: str
    failures: int
    opened_at: float

    def retry_in(self, open_s: float, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 if not open)."""
        return max(0.0, self.opened_at + open_s - now) if self.state == OPEN else 0.0


class Breakers:
    """Reads and feeds the breakers; reads are cached for ``cache_s`` per process."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        threshold: int = 10,
        open_s: float = 30.0,
        cache_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.threshold = threshold
        self.open_s = open_s
        self.cache_s = cache_s
        self._clock = clock
        self._record = redis.register_script(_RECORD)
        self._cache: dict[str, tuple[float, BreakerState]] = {}

    def key(self, endpoint_id: str) -> str:
        return f"{self.prefix}:breaker:{endpoint_id}"

    async def record(self, endpoint_id: str, ok: bool) -> str:
        """Feed one outcome; returns the breaker's state after it."""
        state = await self._record(
            keys=[self.key(endpoint_id)],
            args=["success" if ok else "failure", self._clock(), self.threshold, self.open_s],
        )
        self._cache.pop(endpoint_id, None)
        text = state.decode() if isinstance(state, bytes) else str(state)
        metrics.BREAKER.labels(endpoint_id).set(metrics.BREAKER_VALUES.get(text, 0))
        return text

    async def get(self, endpoint_id: str) -> BreakerState:
        now = self._clock()
        cached = self._cache.get(endpoint_id)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        raw = await self.redis.hgetall(self.key(endpoint_id))
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        state = fields.get("state", CLOSED)
        opened = float(fields.get("opened", 0) or 0)
        if state == OPEN and now - opened >= self.open_s:
            state = HALF_OPEN
        result = BreakerState(state, int(fields.get("failures", 0) or 0), opened)
        self._cache[endpoint_id] = (now, result)
        return result

    async def is_open(self, endpoint_id: str) -> bool:
        return (await self.get(endpoint_id)).state == OPEN

    async def try_probe(self, endpoint_id: str) -> bool:
        """In ``half_open``: become the one probe (for at most ``open_s``)."""
        taken = await self.redis.set(
            f"{self.key(endpoint_id)}:probe", "1", nx=True, px=int(self.open_s * 1000)
        )
        return bool(taken)
