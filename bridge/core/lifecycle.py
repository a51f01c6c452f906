"""The lifecycle of one request: its phases, every transition, and what each error means.

::

    accepted ──MarkSubmitting──▶ submitting ──Submit, MarkSubmitted──▶ submitted
        ▲                            │                                     │
        └──── Reopen (at_least_once) ┘               Follow / Look / CancelJob
                                                                           ▼
                                                  Finalize, Publish ──▶ final

Like the client's flows, the lifecycle is a sans-IO generator: it yields *effects*
(record this in the ledger, send the job, follow it, sleep, deliver) and receives their
results, or has their exceptions thrown into it. The tracker
(:mod:`bridge.worker.tracker`) performs the effects; the unit tier drives the same
generator with a fake that answers with any sequence of errors.

Every error is classified once, here (:func:`classify`):

- **transient** (connection errors, 5xx, 429, timeouts): retried with back-off, inside
  the route's budgets, for at most ``Rules.give_up_s`` in a row (by then a job the
  endpoint held has expired there: RunPod keeps a job at most its TTL);
- **store** (Redis unreachable): waited out, then the ledger is read again (a request
  cannot end without Redis: its final reply is written there);
- **permanent** (401/403 ``unauthorized``; 404 for a job we submitted ``job_lost``;
  400/413/422 ``invalid_request``): the request ends at once with that reason, is
  dead-lettered, and the endpoint's breaker is told of a refused key;
- **unknown** (a bug, a Redis script error): at most ``Rules.internal_attempts`` tries,
  each after re-reading the ledger, then ``FAILED`` with reason ``internal_error``.

No path keeps a request in flight without bound unless its job is alive at the endpoint.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.core.ledger import Delivery, Grant, Marked, Record
from bridge.core.model import CANCELLED, EXPIRED, FAILED, TIMED_OUT, Outcome
from bridge.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    InvalidInputError,
    JobExpired,
    NotFoundError,
    PayloadTooLargeError,
    ProtocolError,
    RateLimitedError,
    RunpodError,
    ServerError,
    TransportError,
    WaitTimeout,
)


class Phase(enum.StrEnum):
    """Where a request is; the ledger's ``state`` field holds the value."""

    ACCEPTED = "accepted"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    FINAL = "final"


# -- reasons a final reply can carry ------------------------------------------------------

CANCELLED_REASON: Final = "cancelled"
DEADLINE: Final = "deadline"
PURGED: Final = "purged"
UNAUTHORIZED: Final = "unauthorized"
JOB_LOST: Final = "job_lost"
INVALID_REQUEST: Final = "invalid_request"
ENDPOINT_NOT_FOUND: Final = "endpoint_not_found"
AMBIGUOUS_SUBMIT: Final = "ambiguous_submit"
SUBMIT_FAILED: Final = "submit_failed"
ENDPOINT_UNAVAILABLE: Final = "endpoint_unavailable"
ENDPOINT_UNREACHABLE: Final = "endpoint_unreachable"
INTERNAL_ERROR: Final = "internal_error"

DEAD_LETTER_REASONS: Final = frozenset(
    {
        UNAUTHORIZED,
        JOB_LOST,
        INVALID_REQUEST,
        ENDPOINT_NOT_FOUND,
        AMBIGUOUS_SUBMIT,
        SUBMIT_FAILED,
        ENDPOINT_UNAVAILABLE,
        ENDPOINT_UNREACHABLE,
        INTERNAL_ERROR,
    }
)
"""Endings that need a person: they are also written to the dead-letter stream."""


# -- classification -------------------------------------------------------------------------


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    STORE = "store"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an error means for the request: its kind, and for a permanent one the final
    status and reason."""

    kind: ErrorKind
    status: str = FAILED
    reason: str = ""


def classify(error: BaseException, phase: Phase) -> Verdict:
    """The one place that decides what an error means (see the module docstring)."""
    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return Verdict(ErrorKind.STORE)
    if isinstance(error, RateLimitedError | ServerError | TransportError | WaitTimeout):
        return Verdict(ErrorKind.TRANSIENT)
    if isinstance(error, ProtocolError):  # a proxy's page instead of JSON: try again
        return Verdict(ErrorKind.TRANSIENT)
    if isinstance(error, AuthenticationError):
        return Verdict(ErrorKind.PERMANENT, FAILED, UNAUTHORIZED)
    if isinstance(error, JobExpired):
        return Verdict(ErrorKind.PERMANENT, EXPIRED, JOB_LOST)
    if isinstance(error, NotFoundError):
        if phase is Phase.SUBMITTED:
            return Verdict(ErrorKind.PERMANENT, EXPIRED, JOB_LOST)
        return Verdict(ErrorKind.PERMANENT, FAILED, ENDPOINT_NOT_FOUND)
    if isinstance(error, BadRequestError | PayloadTooLargeError | InvalidInputError):
        return Verdict(ErrorKind.PERMANENT, FAILED, INVALID_REQUEST)
    if isinstance(error, APIError):  # another 4xx: the endpoint refuses it for good
        return Verdict(ErrorKind.PERMANENT, FAILED, INVALID_REQUEST)
    return Verdict(ErrorKind.UNKNOWN)


def summary(error: BaseException, limit: int = 300) -> str:
    """A short account of an error for a reply or a dead letter (never a traceback)."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- effects: what the lifecycle asks its driver to do -------------------------------------


@dataclass(frozen=True, slots=True)
class MarkSubmitting:
    """Take the right to POST ``/run`` (ledger) and a slot of the route's fleet-wide
    ``max_in_flight``; answers a :class:`Grant`. The driver waits for a free slot, so
    it answers :attr:`Grant.no_slot` only when a cancel came while it waited."""


@dataclass(frozen=True, slots=True)
class Reopen:
    """``submitting`` → ``accepted`` after an ambiguous submit; answers a bool."""


@dataclass(frozen=True, slots=True)
class CountSubmission:
    """Add ``delta`` to the ledger's ``submissions`` (POSTs of ``/run`` started, counted
    before each is sent, so one a stopped worker may have sent is counted); answers the
    new total."""

    delta: int


@dataclass(frozen=True, slots=True)
class CountAmbiguous:
    """Count a resubmission that may run the job twice (``cause``: ``lost_response``, or
    ``resumed`` after a worker stopped mid-submit); answers None."""

    cause: str


@dataclass(frozen=True, slots=True)
class BreakerWait:
    """Seconds until the endpoint's breaker lets a submission through (0: now)."""


@dataclass(frozen=True, slots=True)
class EndpointAnswered:
    """Feed the endpoint's breaker; answers None (best effort)."""

    ok: bool


@dataclass(frozen=True, slots=True)
class Submit:
    """POST the job (``/run``, or ``/runsync`` for mode sync); answers its job id."""


@dataclass(frozen=True, slots=True)
class MarkSubmitted:
    """Record the job id (ledger); answers :class:`Marked`."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Progress:
    """Show an in-flight state (Celery door); answers None."""

    state: str


class Interrupt(enum.Enum):
    """Why :class:`Follow` came back without an outcome."""

    WOKEN = "woken"
    """A cancel, a webhook or a purge: look again."""
    DEADLINE = "deadline"
    """``timeout`` passed."""


@dataclass(frozen=True, slots=True)
class Follow:
    """Follow the job by the request's mode for at most ``timeout`` seconds (None: no
    limit); answers its final :class:`Outcome` or an :class:`Interrupt`."""

    timeout: float | None


@dataclass(frozen=True, slots=True)
class Look:
    """Read ``/status`` once; answers the final :class:`Outcome` or None."""


@dataclass(frozen=True, slots=True)
class CancelJob:
    """POST ``/cancel`` and read the status; answers the final Outcome or None."""


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Reload:
    """Read the request's ledger record again; answers a :class:`Record`."""


@dataclass(frozen=True, slots=True)
class Finalize:
    """Store the final reply and push it to the reply list, once; answers a
    :class:`Delivery`."""

    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Publish:
    """After winning :class:`Finalize`: the Celery result, the canvas, the dead letter,
    metrics; answers None."""

    outcome: Outcome


Effect: TypeAlias = (
    MarkSubmitting | Reopen | CountSubmission | CountAmbiguous | BreakerWait
    | EndpointAnswered | Submit | MarkSubmitted | Progress | Follow | Look | CancelJob
    | Sleep | Reload | Finalize | Publish
)  # fmt: skip
Lifecycle: TypeAlias = Generator[Effect, Any, Outcome | None]


# -- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rules:
    """The bounds of one route's lifecycle (from its settings).

    Attributes:
        delivery: ``at_least_once`` resubmits after an ambiguous submit,
            ``at_most_once`` ends it ``FAILED`` (``ambiguous_submit``).
        submit_attempts: POSTs of ``/run`` tried before ``submit_failed``.
        internal_attempts: unexpected errors tolerated before ``internal_error``.
        give_up_s: transient endpoint errors in a row for this long end the request
            (``endpoint_unreachable``).
        breaker_wait_s: an accepted request waits this long at most for an open
            breaker before ``endpoint_unavailable``.
        backoff_s, backoff_cap_s: the first pause after an error, and the longest.
    """

    delivery: str = "at_least_once"
    submit_attempts: int = 5
    internal_attempts: int = 5
    give_up_s: float = 86_400.0
    breaker_wait_s: float = 3_600.0
    backoff_s: float = 0.25
    backoff_cap_s: float = 30.0

    def backoff(self, failures: int) -> float:
        return min(self.backoff_cap_s, self.backoff_s * 2.0 ** max(0, failures - 1))


@dataclass(frozen=True, slots=True)
class Start:
    """Where a request starts (a new one, or one resumed from its ledger record)."""

    owner: str
    phase: Phase = Phase.ACCEPTED
    job_id: str | None = None
    submissions: int = 0
    """The ledger's count of POSTs started by processes before this one."""
    granted: bool = False
    """The claim already took the right to POST ``/run`` (phase ``submitting``)."""
    deadline: float | None = None
    """Wall-clock time after which the job is cancelled and the request ``TIMED_OUT``."""


@dataclass(slots=True)
class Signals:
    """What other coroutines tell a request while it runs (read between steps)."""

    cancel: bool = False
    purged: bool = False

    def cancel_asked(self) -> bool:
        """Read through a method: other coroutines set the flag while the lifecycle
        waits, so no check may be taken as still true after a yield."""
        return self.cancel


# -- the lifecycle ---------------------------------------------------------------------------


class _NotOurs(Exception):
    """Another process submits, follows or finished the request."""


@dataclass(slots=True)
class _State:
    phase: Phase
    job_id: str | None
    base: int
    """POSTs of /run counted before this lifecycle (by a process that stopped)."""
    made: int = 0
    """POSTs of /run this lifecycle sent that may have created a job."""
    transient_since: float | None = None
    transient: int = 0
    store: int = 0
    unknown: int = 0
    reload: bool = False
    asking: bool = False
    """MarkSubmitting was sent and its answer not yet read."""
    holds_grant: bool = False
    """This lifecycle holds the right to POST /run (the ledger says submitting, ours)."""
    sending: bool = False
    """A POST of /run is under way: until it answers, a job may exist."""
    history: list[str] = field(default_factory=list)


def _cancelled_before_submission() -> Outcome:
    return Outcome(CANCELLED, reason=CANCELLED_REASON, message="cancelled before submission")


def lifecycle(
    start: Start, rules: Rules, signals: Signals, clock: Callable[[], float] = time.time
) -> Lifecycle:
    """Take a request from ``start`` to its one final reply.

    Returns the outcome it delivered, or None when another process has the request (it
    submits, follows or already finished it).
    """
    state = _State(start.phase, start.job_id, start.submissions)
    state.holds_grant = start.granted and start.phase is Phase.SUBMITTING
    while True:
        try:
            if state.reload:
                record: Record = yield Reload()
                state.reload, state.store = False, 0
                _resume_from(record, state, start, signals)
            if state.phase is Phase.SUBMITTED:
                outcome = yield from _follow(state, start, signals, clock)
            else:
                outcome = yield from _submit(state, start, rules, signals, clock)
        except _NotOurs:
            return None
        except Exception as error:
            outcome = yield from _on_error(error, state, rules, signals, clock)
        if outcome is not None:
            return (yield from _deliver(outcome, state, rules))


def _resume_from(record: Record, state: _State, start: Start, signals: Signals) -> None:
    if record.state not in (Phase.ACCEPTED, Phase.SUBMITTING, Phase.SUBMITTED):
        raise _NotOurs  # final (finished elsewhere), a tombstone, or gone
    if record.owner and record.owner != start.owner:
        raise _NotOurs  # adopted by another process while we were failing
    phase = Phase(record.state)
    if phase is Phase.SUBMITTED or record.job_id:
        state.job_id = record.job_id or state.job_id
    # A grant we asked for (or held) with no POST under way is still ours: its answer
    # was lost, nothing was sent. A POST under way when the error hit is ambiguous.
    state.holds_grant = (
        phase is Phase.SUBMITTING and (state.holds_grant or state.asking) and not state.sending
    )
    state.asking = state.sending = False
    state.phase = phase
    signals.cancel = signals.cancel or record.cancel


def _on_error(
    error: Exception, state: _State, rules: Rules, signals: Signals, clock: Callable[[], float]
) -> Generator[Effect, Any, Outcome | None]:
    """Decide what ``error`` means: an outcome ends the request, None goes on."""
    verdict = classify(error, state.phase)
    state.history.append(f"{clock():.3f} {summary(error, 200)}")
    if verdict.kind is ErrorKind.PERMANENT:
        if verdict.reason == UNAUTHORIZED:
            yield EndpointAnswered(False)
        if verdict.reason == JOB_LOST and signals.purged:
            return Outcome(CANCELLED, reason=PURGED, message="the endpoint queue was purged")
        return Outcome(verdict.status, reason=verdict.reason, message=summary(error),
                       dead_letter=verdict.reason in DEAD_LETTER_REASONS)  # fmt: skip
    if verdict.kind is ErrorKind.TRANSIENT:
        now = clock()
        state.transient_since = state.transient_since or now
        state.transient += 1
        if isinstance(error, ServerError | TransportError):
            yield EndpointAnswered(False)
        if now - state.transient_since >= rules.give_up_s:
            return Outcome(
                FAILED,
                reason=ENDPOINT_UNREACHABLE,
                message=f"the endpoint failed for {rules.give_up_s:g} s in a row; "
                f"last error: {summary(error)}",
                dead_letter=True,
            )
        yield Sleep(rules.backoff(state.transient))
        state.reload = True  # whatever failed, the ledger says what happened
        return None
    if verdict.kind is ErrorKind.STORE:
        state.store += 1
        yield Sleep(rules.backoff(state.store))
        state.reload = True
        return None
    state.unknown += 1
    if state.unknown >= rules.internal_attempts:
        return Outcome(FAILED, reason=INTERNAL_ERROR, message=summary(error), dead_letter=True)
    yield Sleep(rules.backoff(state.unknown))
    state.reload = True  # the error may have hit after a step was recorded
    return None


def _submit(
    state: _State, start: Start, rules: Rules, signals: Signals, clock: Callable[[], float]
) -> Generator[Effect, Any, Outcome | None]:
    """From ``accepted`` (or a resumed ``submitting``) to ``submitted``; an outcome when
    the request ends before that."""
    if state.phase is Phase.SUBMITTING and state.job_id is not None:
        return (yield from _record_job(state, state.job_id, signals))  # only that failed
    if state.phase is Phase.SUBMITTING and not state.holds_grant:
        # Sent, or maybe sent, by a process that stopped (or by us, when an error hit
        # while the POST was under way): the route's delivery policy decides.
        if rules.delivery == "at_most_once":
            return Outcome(
                FAILED,
                reason=AMBIGUOUS_SUBMIT,
                message="the job may have been sent before its worker stopped (or failed) "
                "and its id was not recorded; the route is at_most_once, so it is not sent "
                "again",
                dead_letter=True,
            )
        if not (yield Reopen()):
            state.reload = True
            return None
        yield CountAmbiguous("resumed")
        state.phase = Phase.ACCEPTED
    attempt = 0
    while True:
        attempt += 1
        ended = yield from _wait_for_breaker(rules, signals, clock)
        if ended is not None:
            return ended
        if not state.holds_grant:
            state.asking = True
            grant: Grant = yield MarkSubmitting()
            state.asking = False
            if grant.no_slot and (grant.cancel_requested or signals.cancel_asked()):
                return _cancelled_before_submission()  # cancelled while waiting for a slot
            if not grant.granted:
                raise _NotOurs
            state.holds_grant, state.phase = True, Phase.SUBMITTING
            signals.cancel = signals.cancel or grant.cancel_requested
        elif attempt > 1:
            yield CountSubmission(1)  # durable before the POST: a crash counts it
        if signals.cancel_asked():
            return _cancelled_before_submission()
        state.sending = True
        state.made += 1  # undone below when the endpoint proves it made no job
        try:
            job_id: str = yield Submit()
        except (ConnectError, RateLimitedError) as error:  # provably no job was made
            state.sending = False
            state.made -= 1
            if isinstance(error, ConnectError):
                yield EndpointAnswered(False)
            failure: Exception = error
        except (ServerError, TransportError, ProtocolError) as error:  # maybe a job
            state.sending = False
            yield EndpointAnswered(False)
            state.history.append(f"{clock():.3f} {summary(error, 200)}")
            if rules.delivery == "at_most_once":
                return Outcome(
                    FAILED,
                    reason=AMBIGUOUS_SUBMIT,
                    message=f"submitting may or may not have worked ({summary(error)}); the "
                    "route is at_most_once, so it is not sent again",
                    dead_letter=True,
                )
            yield CountAmbiguous("lost_response")
            failure = error
        except (APIError, InvalidInputError):  # refused: no job was made; ends below
            state.sending = False
            state.made -= 1
            raise
        else:
            state.sending = False
            yield EndpointAnswered(True)
            return (yield from _record_job(state, job_id, signals))
        if attempt >= rules.submit_attempts:
            return Outcome(
                FAILED,
                reason=SUBMIT_FAILED,
                message=f"submitting failed {attempt} times; last error: {summary(failure)}",
                dead_letter=True,
            )
        yield Sleep(rules.backoff(attempt))


def _wait_for_breaker(
    rules: Rules, signals: Signals, clock: Callable[[], float]
) -> Generator[Effect, Any, Outcome | None]:
    """Wait while the endpoint's breaker is open (nothing is recorded meanwhile, so a
    worker that stops here leaves nothing ambiguous); an outcome when the request ends
    (cancelled, or the breaker stayed open too long)."""
    waited_since = clock()
    while (wait := (yield BreakerWait())) > 0:
        if signals.cancel_asked():
            break
        if clock() - waited_since >= rules.breaker_wait_s:
            return Outcome(
                FAILED,
                reason=ENDPOINT_UNAVAILABLE,
                message=f"the endpoint's circuit breaker stayed open for "
                f"{rules.breaker_wait_s:g} s",
                dead_letter=True,
            )
        yield Sleep(min(max(wait, 0.2), 2.0))
    if signals.cancel_asked():
        return _cancelled_before_submission()
    return None


def _record_job(
    state: _State, job_id: str, signals: Signals
) -> Generator[Effect, Any, Outcome | None]:
    state.job_id = job_id
    marked: Marked = yield MarkSubmitted(job_id)
    if not marked.recorded and marked.state != Phase.SUBMITTED:
        raise _NotOurs  # finished meanwhile (the job runs on; its reply is given)
    state.phase = Phase.SUBMITTED
    signals.cancel = signals.cancel or marked.cancel_requested
    yield Progress("IN_QUEUE")
    return None


def _follow(
    state: _State, start: Start, signals: Signals, clock: Callable[[], float]
) -> Generator[Effect, Any, Outcome | None]:
    """From ``submitted`` to the job's end (or a cancel, or the deadline)."""
    while True:
        if signals.cancel_asked():
            return (yield from _cancel(state))
        remaining = None if start.deadline is None else start.deadline - clock()
        if remaining is not None and remaining <= 0:
            return (yield from _time_out(state))
        result = yield Follow(remaining)
        state.transient_since, state.transient = None, 0  # the endpoint answered
        if isinstance(result, Outcome):
            return result
        if result is Interrupt.WOKEN and not signals.cancel_asked():
            outcome: Outcome | None = yield Look()
            if outcome is not None:
                return outcome
            signals.purged = False  # a purge that did not touch this job


def _cancel(state: _State) -> Generator[Effect, Any, Outcome | None]:
    outcome: Outcome | None = yield CancelJob()
    if outcome is None:  # the endpoint has not stopped it yet: say what we asked
        return Outcome(CANCELLED, reason=CANCELLED_REASON, job_id=state.job_id)
    if outcome.status == CANCELLED and outcome.reason is None:
        outcome.reason = CANCELLED_REASON
    return outcome


def _time_out(state: _State) -> Generator[Effect, Any, Outcome | None]:
    try:
        yield CancelJob()
    except RunpodError as error:  # the deadline holds whatever the endpoint says
        state.history.append(f"cancel after the deadline failed: {summary(error, 200)}")
    return Outcome(
        TIMED_OUT,
        reason=DEADLINE,
        message="no result within the request's deadline",
        job_id=state.job_id,
    )


def _deliver(
    outcome: Outcome, state: _State, rules: Rules
) -> Generator[Effect, Any, Outcome | None]:
    """Finalize once, then publish; Redis outages are waited out, any other error is
    retried a bounded number of times (then the request ends ``internal_error`` if it
    can, and the error is raised if even that fails)."""
    outcome.submissions = state.base + state.made
    outcome.job_id = outcome.job_id or state.job_id
    outcome.history = outcome.history or state.history
    published = False
    failures = 0
    while True:
        try:
            if not published:
                delivery: Delivery = yield Finalize(outcome)
                if not delivery.won:
                    return None
                published = True
            yield Publish(outcome)
            return outcome
        except Exception as error:
            verdict = classify(error, Phase.FINAL)
            failures += 1
            if verdict.kind is not ErrorKind.STORE and failures >= rules.internal_attempts:
                if published or outcome.reason == INTERNAL_ERROR:
                    raise  # the tracker logs it; nothing more can be done here
                outcome = Outcome(FAILED, reason=INTERNAL_ERROR, message=summary(error),
                                  job_id=outcome.job_id, submissions=outcome.submissions,
                                  dead_letter=True)  # fmt: skip
                failures = 0
            yield Sleep(rules.backoff(failures))
