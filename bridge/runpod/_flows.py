"""Sans-IO flows: retrying, waiting and streaming, written once for both flavours.

A flow is a generator that yields steps — :class:`Send` (send this request),
:class:`Sleep` (sleep this long) or :class:`Emit` (hand this value to the caller) — and
receives, after each ``Send``, either a :class:`~bridge.runpod._protocol.Response` or the
:class:`~bridge.errors.TransportError` the attempt ended with. Its return value is the
result of the call. ``sync.py`` and ``asyncio.py`` each drive flows with a ten-line loop.
Time comes from an injected :class:`~bridge.runpod._policy.Runtime`, so tests drive
flows with a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeAlias, TypeVar

from bridge.errors import (
    RETRYABLE_ERRORS,
    APIError,
    JobExpired,
    NotFoundError,
    TransportError,
    WaitTimeout,
)
from bridge.runpod import _protocol as wire
from bridge.runpod._policy import MIN_HOLD, RUNSYNC_HOLD, Runtime

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``request``; the driver replies with a Response or a TransportError."""

    request: wire.Request


@dataclass(frozen=True, slots=True)
class Sleep:
    """Sleep ``seconds`` before going on."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Emit:
    """Give ``value`` to the caller (stream chunks)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """Not yielded by flows: what drivers report when a flow returns ``value``."""

    value: T


Step: TypeAlias = Send | Sleep | Emit
Reply: TypeAlias = wire.Response | TransportError | None
Flow: TypeAlias = Generator[Step, Reply, T]


@dataclass(slots=True)
class JobState:
    """What a client knows about one job, shared by its flows.

    Attributes:
        seen: the endpoint acknowledged the job at least once, so a later 404 means
            the job expired rather than never existed.
        final: the last final status object seen (cleared by a retry).
        holds: the server answers ``status-sync`` / ``?wait=`` (until proven otherwise).
    """

    target: wire.Target
    job_id: str
    seen: bool = False
    final: dict[str, Any] | None = None
    holds: bool = True

    def observe(self, job: dict[str, Any]) -> None:
        """Record a status object read from the endpoint."""
        self.seen = True
        if job.get("status") in wire.FINAL_STATES:
            self.final = job

    def expired(self, error: NotFoundError) -> Exception:
        """The error for a 404 about this job."""
        if not self.seen:
            return error
        last = self.final or {"id": self.job_id}
        return JobExpired(
            "the endpoint no longer knows this job (expired or purged)",
            status="EXPIRED",
            endpoint_id=self.target.endpoint_id,
            job_id=self.job_id,
            job=dict(last),
        )


def _wait_timeout(where: wire.Request | JobState) -> WaitTimeout:
    endpoint_id = where.endpoint_id if isinstance(where, wire.Request) else where.target.endpoint_id
    return WaitTimeout(
        "deadline passed before the job finished; it may still be running",
        endpoint_id=endpoint_id,
        job_id=where.job_id,
    )


def call(
    request: wire.Request,
    rt: Runtime,
    *,
    deadline: float | None = None,
    parser: Callable[[wire.Request, wire.Response], Any] = wire.parse,
) -> Flow[Any]:
    """Send ``request`` until it succeeds or its retry policy gives up; return the parsed
    reply. With a ``deadline`` (clock time), no attempt and no pause reaches past it."""
    retry = 0
    while True:
        attempt = request
        if deadline is not None:
            remaining = deadline - rt.clock()
            if remaining <= 0:
                raise _wait_timeout(request)
            attempt = replace(request, timeout=min(request.timeout, remaining))
        reply = yield Send(attempt)
        try:
            return parser(request, _check(reply))
        except (*RETRYABLE_ERRORS,) as error:
            retry += 1
            if retry >= rt.retry.attempts or not rt.retry.may_retry(request, error):
                if deadline is not None and rt.clock() >= deadline:
                    raise _wait_timeout(request) from error
                raise
            pause = rt.retry.delay(retry, error, rt.rand)
            if deadline is not None and rt.clock() + pause >= deadline:
                raise _wait_timeout(request) from error
        yield Sleep(pause)


def _check(reply: Reply) -> wire.Response:
    if isinstance(reply, TransportError):
        raise reply
    if reply is None:
        raise TypeError("a Send step must be answered with a Response or a TransportError")
    return reply


def job_call(job: JobState, request: wire.Request, rt: Runtime, **kwargs: Any) -> Flow[Any]:
    """:func:`call` about a job: a 404 becomes :class:`JobExpired` once the job was seen."""
    try:
        reply = yield from call(request, rt, **kwargs)
    except NotFoundError as error:
        raise job.expired(error) from error
    job.seen = True
    return reply


def _hold_for(job: JobState, rt: Runtime, deadline: float | None) -> float | None:
    if not (rt.poll.long_poll and job.holds):
        return None
    if deadline is None:
        return rt.poll.hold
    # Leave a little room so the answer arrives before the deadline, not at it.
    hold = min(rt.poll.hold, deadline - rt.clock() - 0.05)
    return hold if hold >= MIN_HOLD else None


def _no_hold(error: APIError) -> bool:
    # A server without /status-sync (or without ?wait=) answers 404/405/501 to it.
    return error.status_code in {404, 405, 501}


def _pause(
    job: JobState, started: float, delays: Iterator[float], rt: Runtime, deadline: float | None
) -> Flow[None]:
    """Sleep what is left of the next pause once the request's own duration is counted:
    a server that held the request has done the waiting already."""
    now = rt.clock()
    if deadline is not None and now >= deadline:
        raise _wait_timeout(job)
    pause = next(delays) - (now - started)
    if deadline is not None:
        pause = min(pause, deadline - now)
    if pause > 0:
        yield Sleep(pause)


def _read(
    job: JobState, request: wire.Request, rt: Runtime, deadline: float | None
) -> Flow[dict[str, Any] | None]:
    """One status or stream read; None when the server turned out not to hold requests
    (the job then falls back to plain reads, which also tell a 404 apart)."""
    parser = wire.parse_job if request.op.startswith("status") else wire.parse
    try:
        reply = yield from call(request, rt, deadline=deadline, parser=parser)
    except APIError as error:
        if request.params.get("wait") is not None and _no_hold(error):
            job.holds = False
            return None
        if isinstance(error, NotFoundError):
            raise job.expired(error) from error
        raise
    job.seen = True
    return reply if isinstance(reply, dict) else {}


def wait(job: JobState, rt: Runtime, *, deadline: float | None = None) -> Flow[dict[str, Any]]:
    """Wait until the job is final and return its final status object."""
    delays = rt.poll.delays(rt.rand)
    if job.final is None and job.seen and _hold_for(job, rt, deadline) is None:
        # Plain polling of a job known to be unfinished: the first look is worth a pause.
        yield from _pause(job, rt.clock(), delays, rt, deadline)
    while job.final is None:
        started = rt.clock()
        hold = _hold_for(job, rt, deadline)
        op = "status" if hold is None else "status-sync"
        request = wire.job_request(job.target, op, job.job_id, hold=hold)
        status = yield from _read(job, request, rt, deadline)
        if status is None:
            continue
        job.observe(status)
        if job.final is None:
            yield from _pause(job, started, delays, rt, deadline)
    return job.final


def stream(job: JobState, rt: Runtime) -> Flow[None]:
    """Emit each chunk's output once; end on any final state.

    The server hands out each chunk once. A final reply that still carried chunks is
    followed by one more read without a hold, so nothing said last is left behind.
    """
    delays = rt.poll.delays(rt.rand)
    draining = False
    while True:
        started = rt.clock()
        hold = None if draining else _hold_for(job, rt, None)
        request = wire.job_request(job.target, "stream", job.job_id, hold=hold)
        reply = yield from _read(job, request, rt, None)
        if reply is None:
            continue
        chunks = reply.get("stream")
        chunks = chunks if isinstance(chunks, list) else []
        for chunk in chunks:
            yield Emit(wire.chunk_output(chunk))
        if reply.get("status") in wire.FINAL_STATES:
            if draining or not chunks:
                return
            draining = True
            continue
        if chunks:  # output is flowing: look again soon
            delays = rt.poll.delays(rt.rand)
        yield from _pause(job, started, delays, rt, None)


def run_sync(
    target: wire.Target, body: dict[str, Any], rt: Runtime, *, deadline: float | None
) -> Flow[Any]:
    """``/runsync?wait=``, then wait on the job; return the output of a COMPLETED job."""
    job = yield from submit_held(target, body, rt, deadline=deadline)
    final = yield from wait(job, rt, deadline=deadline)
    return wire.job_outcome(final, endpoint_id=target.endpoint_id, job_id=job.job_id)


def submit_held(
    target: wire.Target, body: dict[str, Any], rt: Runtime, *, deadline: float | None
) -> Flow[JobState]:
    """``/runsync?wait=``; return the job's state, final if it ended within the hold."""
    hold = RUNSYNC_HOLD
    if deadline is not None:  # the server should answer half a second before the deadline
        hold = max(MIN_HOLD, min(hold, deadline - rt.clock() - 0.5))
    request = wire.run_request(target, body, sync_wait=hold)
    first = yield from call(request, rt, deadline=deadline, parser=wire.parse_job)
    job = JobState(target, first["id"])
    job.observe(first)
    return job


def submit(target: wire.Target, body: dict[str, Any], rt: Runtime) -> Flow[JobState]:
    """``/run``; return the new job's state."""
    reply = yield from call(wire.run_request(target, body), rt, parser=wire.parse_job)
    job = JobState(target, reply["id"])
    job.observe(reply)
    return job


def output(job: JobState, rt: Runtime, *, deadline: float | None) -> Flow[Any]:
    """Wait for the job; return its output or raise its typed outcome."""
    final = yield from wait(job, rt, deadline=deadline)
    return wire.job_outcome(final, endpoint_id=job.target.endpoint_id, job_id=job.job_id)


def status(job: JobState, rt: Runtime) -> Flow[dict[str, Any]]:
    """One fresh ``/status`` read."""
    request = wire.job_request(job.target, "status", job.job_id)
    reply: dict[str, Any] = yield from job_call(job, request, rt, parser=wire.parse_job)
    job.observe(reply)
    return reply


def control(job: JobState, op: str, rt: Runtime, *, timeout: float) -> Flow[dict[str, Any]]:
    """``/cancel`` or ``/retry``; return the server's reply."""
    request = wire.job_request(job.target, op, job.job_id, timeout=timeout)
    reply = yield from job_call(job, request, rt)
    reply = reply if isinstance(reply, dict) else {"result": reply}
    if op == "retry":
        job.final = None
    elif reply.get("status") == wire.CANCELLED:
        job.final = {"id": job.job_id, **reply}
    # A cancel of a job that had already ended answers with its state but not its output:
    # nothing is recorded, the next wait reads the full status.
    return reply
