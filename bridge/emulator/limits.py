"""Request limits: per-operation rates (a sliding window) and concurrency caps of the
queue API, and REST v2's per-user quotas."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds (an exact sliding log).

    Args:
        limit: events allowed per window.
        window: the window length in seconds.
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._times: deque[float] = deque()

    def acquire(self) -> float | None:
        """Count one event now; return None if allowed, else seconds until it would be."""
        now = self._clock()
        times = self._times
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return times[0] + self.window - now
        times.append(now)
        return None


class RateLimiter:
    """One :class:`SlidingWindow` per (user, endpoint, operation), built on first use."""

    def __init__(self, limits: dict[str, int], window: float, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._window = window
        self._clock = clock
        self._windows: dict[tuple[str, str, str], SlidingWindow] = {}

    def check(self, user: str, endpoint_id: str, operation: str) -> int | None:
        """None when allowed; else the ``Retry-After`` value in whole seconds (≥ 1)."""
        limit = self._limits.get(operation)
        if limit is None:
            return None
        slot = (user, endpoint_id, operation)
        window = self._windows.get(slot)
        if window is None:
            window = self._windows[slot] = SlidingWindow(limit, self._window, self._clock)
        wait = window.acquire()
        return None if wait is None else max(1, math.ceil(wait))


class ConcurrencyLimiter:
    """At most N requests of an operation in flight at once, per (user, endpoint)."""

    def __init__(self, limits: dict[str, int]) -> None:
        self._limits = limits
        self._in_flight: dict[tuple[str, str, str], int] = {}

    def acquire(self, user: str, endpoint_id: str, operation: str) -> tuple[str, str, str] | None:
        """Take a slot; returns its handle for :meth:`release`, or None when all are
        taken. Operations without a cap get a handle too (release is then a no-op)."""
        slot = (user, endpoint_id, operation)
        limit = self._limits.get(operation)
        if limit is None:
            return slot
        taken = self._in_flight.get(slot, 0)
        if taken >= limit:
            return None
        self._in_flight[slot] = taken + 1
        return slot

    def release(self, slot: tuple[str, str, str]) -> None:
        if slot[2] not in self._limits:
            return
        left = self._in_flight.get(slot, 0) - 1
        if left > 0:
            self._in_flight[slot] = left
        else:
            self._in_flight.pop(slot, None)


WINDOWS = {"minute": 60, "hour": 3600, "day": 86400}
"""REST v2's quota windows and their lengths in seconds."""


class Quota:
    """REST v2's per-user quotas: requests per fixed minute, hour and day, reported in
    ``RateLimit`` / ``RateLimit-Policy`` headers (IETF draft, as RunPod's openapi shows:
    ``"minute";r=0;t=12, …`` and ``"minute";q=60;w=60, …``).

    Args:
        quotas: requests allowed per window name (``minute``, ``hour``, ``day``).
        clock: seconds; windows start at multiples of their length.
    """

    def __init__(self, quotas: dict[str, int], clock: Callable[[], float]) -> None:
        unknown = set(quotas) - set(WINDOWS)
        if unknown:
            raise ValueError(f"unknown quota window(s): {', '.join(sorted(unknown))}")
        self._quotas = quotas
        self._clock = clock
        self._used: dict[str, tuple[int, int]] = {}  # window -> (its start, requests)

    def take(self) -> tuple[int | None, dict[str, str]]:
        """Count one request. Returns (None, headers) when allowed, else (seconds until
        the exceeded window resets, headers); headers describe the state after it."""
        now = self._clock()
        exceeded: int | None = None
        counts: dict[str, tuple[int, int]] = {}
        for name, quota in self._quotas.items():
            length = WINDOWS[name]
            start = int(now // length) * length
            began, used = self._used.get(name, (start, 0))
            used = used if began == start else 0
            reset = max(1, math.ceil(start + length - now))
            if used >= quota:
                exceeded = max(exceeded or 0, reset)
            counts[name] = (start, used)
        if exceeded is None:
            counts = {name: (start, used + 1) for name, (start, used) in counts.items()}
        self._used.update(counts)
        return exceeded, self._headers(now, counts)

    def _headers(self, now: float, counts: dict[str, tuple[int, int]]) -> dict[str, str]:
        state, policy = [], []
        for name, quota in self._quotas.items():
            start, used = counts[name]
            reset = max(1, math.ceil(start + WINDOWS[name] - now))
            state.append(f'"{name}";r={max(quota - used, 0)};t={reset}')
            policy.append(f'"{name}";q={quota};w={WINDOWS[name]}')
        if not state:
            return {}
        return {"RateLimit": ", ".join(state), "RateLimit-Policy": ", ".join(policy)}
