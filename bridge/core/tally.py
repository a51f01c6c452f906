"""Requests finished per route and how long they took, for ``bridge top``.

Each final reply adds one to two fields of the hash ``Keys.tally(route, bucket)``, where
``bucket`` numbers the :data:`~bridge.core.keys.TALLY_BUCKET_S`-second slice of Unix
time it ended in: ``s:<STATUS>`` (``COMPLETED``, ``FAILED``, ...) and ``l:<n>``, a
latency histogram with four buckets per doubling (``n = ceil(4 * log2(ms))``: each
bucket at most 19 % wider than the one before, so a percentile read from it is within
19 % of the true one); the hash expires after :data:`~bridge.core.keys.TALLY_TTL_S`.

A worker process counts in memory and adds its counts to Redis once a second (one
HINCRBY per field that moved and one EXPIRE per hash, in one pipeline), not three
commands per request: at hundreds of requests a second that was a tenth of a request's
Redis commands. What a process counted in its last second is lost if it dies (a minute's
rate read just after is short by that much); a process that stops adds its counts first.

A reader sums the last :data:`WINDOW_BUCKETS` buckets (the current, partial one
included): a window of 50 to 60 seconds, turned into a rate per minute by its length.
Prometheus has the same figures per worker process; this is the fleet's, from Redis
alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.core.keys import TALLY_BUCKET_S, TALLY_TTL_S, Keys
from bridge.core.scripts import text

log = logging.getLogger("bridge.tally")

WINDOW_BUCKETS = 6
"""Buckets a reader sums: the current one and the five before it."""

STEPS_PER_DOUBLING = 4

DONE_STATUSES = frozenset({"COMPLETED"})
NOT_FAILED = frozenset({"COMPLETED", "CANCELLED"})
"""A cancelled request is neither done nor failed: somebody asked for it."""


def latency_bucket(seconds: float) -> int:
    """The histogram bucket of a latency: 0 for up to 1 ms, then four per doubling."""
    ms = seconds * 1000
    if ms <= 1:
        return 0
    return math.ceil(STEPS_PER_DOUBLING * math.log2(ms))


def bucket_upper_s(bucket: int) -> float:
    """The largest latency (seconds) bucket ``bucket`` holds."""
    return float(2 ** (bucket / STEPS_PER_DOUBLING) / 1000)


def current_bucket(now: float) -> int:
    return int(now // TALLY_BUCKET_S)


class Tally:
    """Counts finished requests (the writer: one per worker process).

    Args:
        redis: where the counts go.
        keys: the deployment's key names.
        clock: Unix time (the bucket a request ends in).
        flush_s: how long counts wait in memory before they are added to Redis.
    """

    def __init__(self, redis: Redis, keys: Keys, clock: Callable[[], float] = time.time,
                 flush_s: float = 1.0) -> None:  # fmt: skip
        self.redis = redis
        self.keys = keys
        self.flush_s = flush_s
        self._clock = clock
        self._counts: Counter[tuple[str, int, str]] = Counter()
        self._flushing: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, route: str, status: str, latency_s: float) -> None:
        """Count one request of ``route`` that ended ``status`` after ``latency_s`` (from
        the event loop; added to Redis within ``flush_s``)."""
        bucket = current_bucket(self._clock())
        self._counts[route, bucket, f"s:{status}"] += 1
        self._counts[route, bucket, f"l:{latency_bucket(latency_s)}"] += 1
        self._flush_later()

    def _flush_later(self) -> None:
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().call_later(self.flush_s, self._due)

    def _due(self) -> None:
        self._flushing = None
        task = asyncio.ensure_future(self._flush_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except (RedisError, OSError) as exc:  # Redis away: the counts wait for the next flush
            log.warning("bridge top's tally not written (%s); kept for the next try",
                        type(exc).__name__)  # fmt: skip
        except Exception:  # a bug: these counts are dropped, the next ones are tried
            log.exception("bridge top's tally could not be written")

    async def flush(self) -> None:
        """Add what was counted to Redis now. Counts that could not be added (Redis
        away) are kept for the next flush while their hash would still be read."""
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        counts, self._counts = self._counts, Counter()
        if not counts:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (route, bucket, name), n in counts.items():
            pipe.hincrby(self.keys.tally(route, bucket), name, n)
        for route, bucket in {(route, bucket) for route, bucket, _ in counts}:
            pipe.expire(self.keys.tally(route, bucket), TALLY_TTL_S)
        try:
            await pipe.execute()
        except (RedisError, OSError):
            oldest = current_bucket(self._clock()) - TALLY_TTL_S // TALLY_BUCKET_S
            kept = Counter({k: n for k, n in counts.items() if k[1] >= oldest})
            self._counts.update(kept)
            self._flush_later()
            raise

    async def aclose(self) -> None:
        """Add the last counts (a process that stops)."""
        for task in list(self._tasks):
            await task  # a flush under way (it reports its own errors)
        await self.flush()
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None


def window_keys(keys: Keys, route: str, now: float) -> list[str]:
    """The keys a reader sums at ``now``, the current bucket first."""
    last = current_bucket(now)
    return [keys.tally(route, last - i) for i in range(WINDOW_BUCKETS)]


@dataclass(frozen=True)
class Window:
    """What the tally says about one route's last minute."""

    seconds: float
    statuses: dict[str, int] = field(default_factory=dict)
    latencies: dict[int, int] = field(default_factory=dict)

    @classmethod
    def read(cls, hashes: Iterable[Mapping[Any, Any]], now: float) -> Window:
        """Sum the hashes of :func:`window_keys` (as HGETALL returned them)."""
        statuses: dict[str, int] = {}
        latencies: dict[int, int] = {}
        for raw in hashes:
            for name, value in raw.items():
                kind, _, what = text(name).partition(":")
                if kind == "s":
                    statuses[what] = statuses.get(what, 0) + int(value)
                elif kind == "l" and what.lstrip("-").isdigit():
                    latencies[int(what)] = latencies.get(int(what), 0) + int(value)
        seconds = (WINDOW_BUCKETS - 1) * TALLY_BUCKET_S + (now % TALLY_BUCKET_S)
        return cls(seconds, statuses, latencies)

    @property
    def done(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in DONE_STATUSES)

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s not in NOT_FAILED)

    def per_minute(self, count: int) -> float:
        return count * 60 / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        """The latency (seconds, a bucket's upper bound) under which ``q`` of the
        requests ended; None when none ended."""
        total = sum(self.latencies.values())
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for bucket in sorted(self.latencies):
            seen += self.latencies[bucket]
            if seen >= rank:
                return bucket_upper_s(bucket)
        return bucket_upper_s(max(self.latencies))  # pragma: no cover (rank <= total)
