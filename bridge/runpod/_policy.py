"""Policies of the client: when to retry, how to wait, and the clock they run on.

Plain values, shared by both flavours; the flows in ``_flows`` apply them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bridge.errors import RETRYABLE_ERRORS, ConnectError, RateLimitedError
from bridge.runpod import _protocol as wire


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how often a failed request is sent again.

    Attributes:
        attempts: tries in all, the first included (1 disables retries).
        backoff: ceiling of the first back-off, in seconds; it doubles on every retry.
        max_backoff: the ceiling never grows past this.
        max_retry_after: a ``Retry-After`` longer than this is not waited for: the error
            is raised instead.
    """

    attempts: int = 5
    backoff: float = 0.1
    max_backoff: float = 5.0
    max_retry_after: float = 60.0

    def may_retry(self, request: wire.Request, error: BaseException) -> bool:
        """Whether ``error`` allows sending ``request`` again.

        A connect error or a 429 proves the server did not take the request, so every
        request may be re-sent; other failures (5xx, read timeout, reset) may have been
        processed, so only idempotent requests are re-sent after them.
        """
        if isinstance(error, RateLimitedError):
            return error.retry_after is None or error.retry_after <= self.max_retry_after
        if isinstance(error, ConnectError):
            return True
        return request.idempotent and isinstance(error, RETRYABLE_ERRORS)

    def delay(self, retry: int, error: BaseException, rand: Callable[[], float]) -> float:
        """Exponential back-off with full jitter, never shorter than ``Retry-After``."""
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** (retry - 1))
        delay: float = rand() * ceiling
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return delay


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How a client waits for a job.

    Attributes:
        first: the first pause between status checks, in seconds.
        factor: each pause is this much longer than the one before ...
        cap: ... up to this.
        jitter: each pause is randomised by up to this fraction, either way.
        long_poll: ask the server to hold status and stream requests (``?wait=``) until
            something changes. Servers that ignore it are polled on the schedule above.
            Each held request keeps one connection open.
        hold: how long, in seconds, one held request may be held.
    """

    first: float = 0.02
    factor: float = 1.5
    cap: float = 2.0
    jitter: float = 0.1
    long_poll: bool = True
    hold: float = 20.0

    def delays(self, rand: Callable[[], float]) -> Iterator[float]:
        """The pauses between checks: geometric growth to ``cap``, with jitter."""
        pause = self.first
        while True:
            yield pause * (1 + self.jitter * (2 * rand() - 1))
            pause = min(self.cap, pause * self.factor)


MIN_HOLD = 1.0
"""Shortest hold worth asking for; below it (a near deadline) plain checks are used."""

RUNSYNC_HOLD = 90.0
"""``/runsync?wait=``: the platform's default and the longest hold other clients ask for."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a flow needs besides replies: policies, a clock and randomness."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random


def deadline_after(timeout: float, rt: Runtime) -> float | None:
    """The clock time ``timeout`` seconds from now; None (no limit) for 0."""
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds (0: no limit), got {timeout!r}")
    return None if timeout == 0 else rt.clock() + timeout
