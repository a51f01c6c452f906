"""Per-endpoint, per-operation request limits: N requests per sliding window."""

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
    """One :class:`SlidingWindow` per (key, endpoint, operation), built on first use."""

    def __init__(self, limits: dict[str, int], window: float, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._window = window
        self._clock = clock
        self._windows: dict[tuple[str, str, str], SlidingWindow] = {}

    def check(self, key_id: str, endpoint_id: str, operation: str) -> int | None:
        """None when allowed; else the ``Retry-After`` value in whole seconds (≥ 1)."""
        limit = self._limits.get(operation)
        if limit is None:
            return None
        slot = (key_id, endpoint_id, operation)
        window = self._windows.get(slot)
        if window is None:
            window = self._windows[slot] = SlidingWindow(limit, self._window, self._clock)
        wait = window.acquire()
        return None if wait is None else max(1, math.ceil(wait))
