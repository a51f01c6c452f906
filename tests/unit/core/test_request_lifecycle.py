"""The request lifecycle, driven without I/O: each error class, each cancel moment, and a
property over every sequence of errors (it ends, within the route's bounds)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from bridge.core import lifecycle as lc
from bridge.core.ledger import NO_SLOT, Delivery, Grant, Marked, Record
from bridge.core.model import CANCELLED, COMPLETED, EXPIRED, FAILED, TIMED_OUT, Outcome
from bridge.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
)

ME = "host:1"
RULES = lc.Rules(
    submit_attempts=3, internal_attempts=3, give_up_s=60.0, breaker_wait_s=30.0,
    backoff_s=0.5, backoff_cap_s=8.0,
)  # fmt: skip

# Faults a world can answer an effect with. "_after" ones apply the effect, then fail
# (the reply was lost after the step happened).
ERRORS: dict[str, Any] = {
    "store": lambda: RedisConnectionError("connection refused"),
    "server": lambda: ServerError("boom", status_code=500),
    "connect": lambda: ConnectError("refused"),
    "rate": lambda: RateLimitedError("slow down", retry_after=1.0),
    "transport": lambda: TransportError("reset"),
    "auth": lambda: AuthenticationError("bad key", status_code=401),
    "notfound": lambda: NotFoundError("no such job", status_code=404),
    "badrequest": lambda: BadRequestError("bad input", status_code=400),
    "bug": lambda: RuntimeError("a bug"),
    "wrongtype": lambda: ResponseError("WRONGTYPE Operation against a key"),
}
BEST_EFFORT = (lc.EndpointAnswered, lc.CountAmbiguous, lc.Progress, lc.Sleep)
NOT_CREATED = {"connect", "rate", "auth", "notfound", "badrequest"}
"""Faults of Submit that prove no job was made."""


@dataclass
class World:
    """A fake ledger, endpoint and clock answering the lifecycle's effects.

    ``faults`` yields, per effect, None (answer normally) or a fault name; ``cancel_at``
    is the step at which a cancel arrives."""

    faults: Iterator[str | None] = field(default_factory=lambda: itertools.repeat(None))
    fault_on: tuple[type, ...] | None = None
    cancel_at: int | None = None
    breaker_open_for: int = 0
    job_runs_for: int = 0
    now: float = 1000.0
    phase: str = "accepted"
    job_id: str | None = None
    cancel: bool = False
    submissions: int = 0
    route_full: bool = False
    """No fleet-wide slot: MarkSubmitting answers ``no_slot`` (the driver's wait ended by
    a cancel)."""
    finalized: int = 0
    jobs_created: int = 0
    maybe_created: int = 0
    effects: list[Any] = field(default_factory=list)
    cancels_sent_after_job: int = 0

    def answer(self, effect: Any, fault: str | None) -> Any:
        after = fault is not None and fault.endswith("_after")
        kind = fault.removesuffix("_after") if fault else None
        if kind is not None and not after:
            if isinstance(effect, lc.Submit):
                self.maybe_created += kind not in NOT_CREATED
            raise ERRORS[kind]()
        result = self._apply(effect)  # a Submit made its job, then the reply was lost
        if kind is not None:
            raise ERRORS[kind]()
        return result

    def _apply(self, effect: Any) -> Any:
        if isinstance(effect, lc.MarkSubmitting):
            if self.phase != "accepted":
                return Grant(False, self.phase, self.cancel, self.submissions)
            if self.route_full:
                return Grant(False, NO_SLOT, self.cancel, self.submissions)
            self.phase, self.submissions = "submitting", self.submissions + 1
            return Grant(True, "ok", self.cancel, self.submissions)
        if isinstance(effect, lc.Reopen):
            if self.phase != "submitting":
                return False
            self.phase = "accepted"
            return True
        if isinstance(effect, lc.CountSubmission):
            self.submissions += effect.delta
            return self.submissions
        if isinstance(effect, lc.BreakerWait):
            if self.breaker_open_for > 0:
                self.breaker_open_for -= 1
                return 5.0
            return 0.0
        if isinstance(effect, lc.Submit):
            self.jobs_created += 1
            self.maybe_created += 1
            return f"job-{self.jobs_created}"
        if isinstance(effect, lc.MarkSubmitted):
            if self.phase in ("accepted", "submitting"):
                self.phase, self.job_id = "submitted", effect.job_id
                return Marked(True, "ok", self.cancel)
            return Marked(False, self.phase, self.cancel)
        if isinstance(effect, lc.Follow):
            if self.job_runs_for > 0:
                self.job_runs_for -= 1
                self.now += 1.0
                return lc.Interrupt.WOKEN
            return Outcome(COMPLETED, output={"ok": True}, has_output=True, job_id=self.job_id)
        if isinstance(effect, lc.Look):
            return None
        if isinstance(effect, lc.CancelJob):
            if self.jobs_created:
                self.cancels_sent_after_job += 1
            return Outcome(CANCELLED, job_id=self.job_id)
        if isinstance(effect, lc.Sleep):
            assert effect.seconds >= 0
            self.now += effect.seconds
            return None
        if isinstance(effect, lc.Reload):
            return Record(
                state=self.phase, job_id=self.job_id, cancel=self.cancel, owner=ME,
                submissions=self.submissions,
            )  # fmt: skip
        if isinstance(effect, lc.Finalize):
            # Idempotent for its one finisher (this lifecycle), like the ledger's script.
            self.finalized += 1
            self.phase = "final"
            return Delivery.REPLIED
        return None  # CountAmbiguous, EndpointAnswered, Progress, Publish

    def clock(self) -> float:
        return self.now

    def run(
        self,
        start: lc.Start | None = None,
        rules: lc.Rules = RULES,
        max_steps: int = 5_000,
    ) -> Outcome | None:
        signals = lc.Signals()
        flow = lc.lifecycle(start or lc.Start(ME), rules, signals, self.clock)
        reply: Any = None
        error: BaseException | None = None
        for step in range(max_steps):
            if self.cancel_at is not None and step >= self.cancel_at and not self.cancel:
                self.cancel = signals.cancel = True
            try:
                effect = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as stop:
                result: Outcome | None = stop.value
                return result
            self.effects.append(effect)
            reply, error = None, None
            fault = None
            if isinstance(effect, BEST_EFFORT):
                pass  # the tracker never lets these fail (best effort, or a sleep)
            elif self.fault_on is None or isinstance(effect, self.fault_on):
                fault = next(self.faults)
            try:
                reply = self.answer(effect, fault)
            except Exception as exc:
                error = exc
        raise AssertionError(f"the lifecycle did not end in {max_steps} steps")

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.effects]


def scripted(*faults: str | None) -> Iterator[str | None]:
    return itertools.chain(faults, itertools.repeat(None))


# -- the plain path -------------------------------------------------------------------------


def test_a_request_is_submitted_once_followed_and_delivered_once() -> None:
    world = World()
    outcome = world.run()
    assert outcome is not None
    assert outcome.status == COMPLETED
    assert outcome.submissions == 1
    assert world.kinds() == [
        "BreakerWait", "MarkSubmitting", "Submit", "EndpointAnswered", "MarkSubmitted",
        "Progress", "Follow", "Finalize", "Publish",
    ]  # fmt: skip


def test_another_process_holding_the_request_stops_this_one() -> None:
    world = World(phase="submitted")
    assert world.run() is None
    assert world.kinds() == ["BreakerWait", "MarkSubmitting"]


# -- permanent endpoint errors end the request at once --------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "reason"),
    [
        ("auth", FAILED, lc.UNAUTHORIZED),
        ("notfound", EXPIRED, lc.JOB_LOST),
        ("badrequest", FAILED, lc.INVALID_REQUEST),
    ],
)
def test_a_permanent_error_while_following_ends_it_dead_lettered(
    fault: str, status: str, reason: str
) -> None:
    # Every Follow fails (the key was revoked; the job vanished).
    world = World(faults=itertools.repeat(fault), fault_on=(lc.Follow,))
    outcome = world.run()
    assert outcome is not None
    assert (outcome.status, outcome.reason, outcome.dead_letter) == (status, reason, True)
    assert world.kinds().count("Follow") == 1
    assert world.finalized == 1
    if fault == "auth":
        assert lc.EndpointAnswered(False) in world.effects  # the breaker is told


def test_a_refused_submission_is_not_counted_as_sent() -> None:
    world = World(faults=scripted("auth"), fault_on=(lc.Submit,))
    outcome = world.run()
    assert outcome is not None
    assert (outcome.status, outcome.reason) == (FAILED, lc.UNAUTHORIZED)
    assert outcome.submissions == 0


# -- transient errors: retried within bounds ------------------------------------------------


def test_transient_errors_while_following_are_retried_then_given_up() -> None:
    world = World(faults=itertools.repeat("server"), fault_on=(lc.Follow,))
    outcome = world.run()
    assert outcome is not None
    assert (outcome.status, outcome.reason) == (FAILED, lc.ENDPOINT_UNREACHABLE)
    assert world.now - 1000.0 >= RULES.give_up_s
    assert world.now - 1000.0 <= RULES.give_up_s + RULES.backoff_cap_s


def test_an_endpoint_that_recovers_in_time_completes_the_request() -> None:
    world = World(faults=scripted("server", "transport"), fault_on=(lc.Follow,))
    outcome = world.run()
    assert outcome is not None
    assert outcome.status == COMPLETED


def test_refusals_before_the_job_exists_are_retried_up_to_the_attempts() -> None:
    world = World(faults=itertools.repeat("connect"), fault_on=(lc.Submit,))
    outcome = world.run()
    assert outcome is not None
    assert (outcome.status, outcome.reason) == (FAILED, lc.SUBMIT_FAILED)
    assert world.kinds().count("Submit") == RULES.submit_attempts
    assert outcome.submissions == 0


# -- ambiguous submissions follow the route's delivery policy ------------------------------


def test_a_lost_run_response_is_sent_again_and_counted_under_at_least_once() -> None:
    world = World(faults=scripted("server_after"), fault_on=(lc.Submit,))
    outcome = world.run()
    assert outcome is not None
    assert outcome.status == COMPLETED
    assert world.jobs_created == 2
    assert outcome.submissions == 2
    assert lc.CountAmbiguous("lost_response") in world.effects


def test_a_lost_run_response_ends_the_request_under_at_most_once() -> None:
    world = World(faults=scripted("server_after"), fault_on=(lc.Submit,))
    outcome = world.run(rules=lc.Rules(delivery="at_most_once"))
    assert outcome is not None
    assert (outcome.status, outcome.reason, outcome.dead_letter) == (
        FAILED, lc.AMBIGUOUS_SUBMIT, True,
    )  # fmt: skip
    assert world.jobs_created == 1
    assert outcome.submissions == 1


@pytest.mark.parametrize("delivery", ["at_least_once", "at_most_once"])
def test_resuming_a_request_that_died_while_submitting(delivery: str) -> None:
    world = World(phase="submitting", submissions=1, maybe_created=1)
    outcome = world.run(lc.Start(ME, lc.Phase.SUBMITTING, submissions=1),
                        rules=lc.Rules(delivery=delivery))  # fmt: skip
    assert outcome is not None
    if delivery == "at_most_once":
        assert (outcome.status, outcome.reason) == (FAILED, lc.AMBIGUOUS_SUBMIT)
        assert world.jobs_created == 0
    else:
        assert outcome.status == COMPLETED
        assert outcome.submissions == 2
        assert lc.CountAmbiguous("resumed") in world.effects


def test_a_job_id_whose_recording_failed_is_recorded_not_resubmitted() -> None:
    # MarkSubmitted fails with a store error before it ran.
    world = World(faults=scripted("store"), fault_on=(lc.MarkSubmitted,))
    outcome = world.run()
    assert outcome is not None
    assert outcome.status == COMPLETED
    assert world.jobs_created == 1
    assert outcome.submissions == 1


# -- unknown errors: a bounded number of attempts ------------------------------------------


@pytest.mark.parametrize("fault", ["bug", "wrongtype"])
def test_unknown_errors_end_in_internal_error_after_the_attempts(fault: str) -> None:
    world = World(faults=itertools.repeat(fault), fault_on=(lc.MarkSubmitting, lc.Reload))
    outcome = world.run()
    assert outcome is not None
    assert (outcome.status, outcome.reason, outcome.dead_letter) == (
        FAILED, lc.INTERNAL_ERROR, True,
    )  # fmt: skip
    assert world.finalized == 1


def test_redis_outages_are_waited_out_and_the_ledger_read_again() -> None:
    world = World(faults=scripted("store", "store", "store", None, None, "store"))
    outcome = world.run()
    assert outcome is not None
    assert outcome.status == COMPLETED
    assert world.kinds().count("Reload") >= 2
    assert world.jobs_created == 1


# -- cancels and deadlines ------------------------------------------------------------------


def test_a_cancel_before_submission_sends_nothing() -> None:
    world = World(cancel_at=0)
    outcome = world.run()
    assert outcome is not None
    assert (outcome.status, outcome.reason) == (CANCELLED, "cancelled")
    assert world.jobs_created == 0
    assert outcome.submissions == 0


def test_a_cancel_while_waiting_for_a_fleet_slot_ends_it_unsent() -> None:
    world = World(cancel=True, route_full=True)
    outcome = world.run()
    assert outcome is not None
    assert (outcome.status, outcome.reason) == (CANCELLED, "cancelled")
    assert (world.jobs_created, world.finalized) == (0, 1)


def test_a_cancel_in_flight_reaches_the_endpoint() -> None:
    world = World(cancel_at=7, job_runs_for=10)
    outcome = world.run()
    assert outcome is not None
    assert outcome.status == CANCELLED
    assert world.cancels_sent_after_job == 1


def test_the_deadline_cancels_the_job_and_times_out() -> None:
    world = World(job_runs_for=100)
    outcome = world.run(lc.Start(ME, deadline=1005.0))
    assert outcome is not None
    assert (outcome.status, outcome.reason) == (TIMED_OUT, "deadline")
    assert world.cancels_sent_after_job == 1


def test_an_open_breaker_is_waited_for_within_its_bound() -> None:
    world = World(breaker_open_for=100)
    outcome = world.run()
    assert outcome is not None
    assert (outcome.status, outcome.reason) == (FAILED, lc.ENDPOINT_UNAVAILABLE)
    assert world.jobs_created == 0
    assert outcome.submissions == 0


# -- properties over every sequence of errors -----------------------------------------------

NON_STORE = [None, "server", "connect", "rate", "transport", "auth", "notfound",
             "badrequest", "bug", "wrongtype", "server_after", "bug_after",
             "wrongtype_after", "transport_after"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.lists(st.sampled_from(NON_STORE), min_size=1, max_size=12),
    delivery=st.sampled_from(["at_least_once", "at_most_once"]),
    cancel_at=st.none() | st.integers(0, 60),
    breaker_open_for=st.integers(0, 3),
)
def test_every_endless_sequence_of_errors_ends_within_the_bounds(
    pattern: list[str | None], delivery: str, cancel_at: int | None, breaker_open_for: int
) -> None:
    """Errors repeating forever (a revoked key, a bug, a dead endpoint): the request
    still ends, with one final reply, and within the route's time bounds."""
    rules = lc.Rules(
        delivery=delivery,
        submit_attempts=3,
        internal_attempts=3,
        give_up_s=60.0,
        breaker_wait_s=30.0,
        backoff_s=0.5,
        backoff_cap_s=8.0,
    )
    world = World(faults=itertools.cycle(pattern), cancel_at=cancel_at,
                  breaker_open_for=breaker_open_for)  # fmt: skip
    try:
        outcome = world.run(rules=rules, max_steps=2_000)
    except Exception:
        _check_delivery_gave_up(world, rules)
        return
    if outcome is None:
        return  # another process holds it (a reply lost after a step)
    assert world.phase == "final"
    bound = rules.give_up_s + rules.breaker_wait_s + 200 * rules.backoff_cap_s
    assert world.now - 1000.0 <= bound
    _check_promises(world, outcome)


@settings(max_examples=300, deadline=None)
@given(
    faults=st.lists(st.sampled_from([*NON_STORE, "store", "store_after"]), max_size=60),
    delivery=st.sampled_from(["at_least_once", "at_most_once"]),
    cancel_at=st.none() | st.integers(0, 80),
    job_runs_for=st.integers(0, 5),
)
def test_any_finite_run_of_errors_gives_one_honest_final_reply(
    faults: list[str | None], delivery: str, cancel_at: int | None, job_runs_for: int
) -> None:
    """Any errors (Redis outages included) followed by a working world: exactly one
    final reply, a cancel reaches a job that exists, ``submissions`` counts every POST
    that may have made a job, and at_most_once never makes two."""
    world = World(faults=scripted(*faults), cancel_at=cancel_at, job_runs_for=job_runs_for)
    rules = lc.Rules(delivery=delivery, submit_attempts=3, internal_attempts=3, backoff_s=0.5)
    try:
        outcome = world.run(rules=rules)
    except Exception:
        _check_delivery_gave_up(world, rules)
        return
    if outcome is None:
        return
    assert world.phase == "final"
    _check_promises(world, outcome)
    if delivery == "at_most_once":
        assert world.jobs_created <= 1


def _check_delivery_gave_up(world: World, rules: lc.Rules) -> None:
    """Only delivery itself may fail past every bound (the tracker then logs it), after
    trying an internal_error reply too."""
    assert isinstance(world.effects[-1], lc.Finalize | lc.Publish)
    tries = [e for e in world.effects if isinstance(e, lc.Finalize | lc.Publish)]
    assert len(tries) >= rules.internal_attempts


def _check_promises(world: World, outcome: Outcome) -> None:
    assert world.kinds().count("Finalize") >= 1
    assert outcome.submissions == world.maybe_created
    if outcome.status == CANCELLED and world.jobs_created and world.job_id is not None:
        assert world.cancels_sent_after_job >= 1  # the cancel reached the GPU
    if outcome.status == COMPLETED:
        assert world.jobs_created >= 1


def test_a_claim_that_took_the_grant_submits_without_asking_again() -> None:
    world = World(phase="submitting", submissions=1)
    outcome = world.run(lc.Start(ME, lc.Phase.SUBMITTING, granted=True))
    assert outcome is not None
    assert outcome.status == COMPLETED
    assert outcome.submissions == 1
    assert "MarkSubmitting" not in world.kinds()
    assert "Reopen" not in world.kinds()  # its own grant: nothing ambiguous
