"""Requests finished per route and how long they took, for ``bridge top``.

Each final reply adds one to two fields of the hash ``Keys.tally(route, bucket)``, where
``bucket`` numbers the :data:`~bridge.core.keys.TALLY_BUCKET_S`-second slice of Unix
time it ended in: ``s:<STATUS>`` (``COMPLETED``, ``FAILED``, ...) and ``l:<n>``, a
latency histogram with four buckets per doubling (``n = ceil(4 * log2(ms))``: each
bucket at most 19 % wider than the one before, so a percentile read from it is within
19 % of the true one). Two HINCRBY and an EXPIRE per request, sent in the pipeline of
the other Redis calls of the same loop turn (see :class:`~bridge.core.scripts.
ScriptBatcher`); the hash expires after :data:`~bridge.core.keys.TALLY_TTL_S`.

A reader sums the last :data:`WINDOW_BUCKETS` buckets (the current, partial one
included): a window of 50 to 60 seconds, turned into a rate per minute by its length.
Prometheus has the same figures per worker process; this is the fleet's, from Redis
alone.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from bridge.core.keys import TALLY_BUCKET_S, TALLY_TTL_S, Keys
from bridge.core.scripts import batcher_for, text

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
    """Counts finished requests (the writer: one per worker process)."""

    def __init__(self, redis: Redis, keys: Keys, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.keys = keys
        self._clock = clock

    async def record(self, route: str, status: str, latency_s: float) -> None:
        """Count one request of ``route`` that ended ``status`` after ``latency_s``."""
        key = self.keys.tally(route, current_bucket(self._clock()))
        # With the other requests' ledger steps of this loop turn, in one pipeline.
        batch = batcher_for(self.redis)
        await asyncio.gather(
            batch.command("HINCRBY", key, f"s:{status}", 1),
            batch.command("HINCRBY", key, f"l:{latency_bucket(latency_s)}", 1),
            batch.command("EXPIRE", key, TALLY_TTL_S),
        )


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
