"""Retry, wait, stream and run_sync flows, driven with a scripted server and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bridge import errors
from bridge.runpod import _flows as flows
from bridge.runpod import _protocol as wire
from bridge.runpod._policy import PollPolicy, RetryPolicy, Runtime, deadline_after

Reply = Callable[..., wire.Response]
MakeHarness = Callable[..., Any]


def job(state: str, **extra: Any) -> dict[str, Any]:
    return {"id": "j1", "status": state, **extra}


def seen(target: wire.Target) -> flows.JobState:
    """A job the endpoint has acknowledged (as after run())."""
    state = flows.JobState(target, "j1")
    state.observe(job("IN_QUEUE"))
    return state


# -- retry policy -------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    policy = RetryPolicy(backoff=1.0, max_backoff=3.0)
    error = errors.ServerError("x", status_code=500)
    assert [policy.delay(n, error, lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]
    assert policy.delay(3, error, lambda: 0.0) == 0.0
    assert policy.delay(2, error, lambda: 0.25) == 0.5


def test_backoff_never_undercuts_retry_after() -> None:
    error = errors.RateLimitedError("slow", retry_after=4.0)
    assert RetryPolicy().delay(1, error, lambda: 0.0) == 4.0


@pytest.mark.parametrize(
    ("error", "run_may", "status_may"),
    [
        (errors.ConnectError("refused"), True, True),
        (errors.RateLimitedError("slow"), True, True),
        (errors.ServerError("boom", status_code=500), False, True),
        (errors.ReadTimeoutError("late"), False, True),
        (errors.TransportError("reset"), False, True),
        (errors.BadRequestError("bad", status_code=400), False, False),
        (errors.AuthenticationError("who", status_code=401), False, False),
    ],
)
def test_what_may_be_retried(
    target: wire.Target, error: Exception, run_may: bool, status_may: bool
) -> None:
    policy = RetryPolicy()
    assert policy.may_retry(wire.run_request(target, {"input": 1}), error) is run_may
    assert policy.may_retry(wire.job_request(target, "status", "j1"), error) is status_may


def test_a_retry_after_beyond_the_limit_is_not_waited_for(target: wire.Target) -> None:
    policy = RetryPolicy(max_retry_after=5.0)
    request = wire.job_request(target, "status", "j1")
    assert not policy.may_retry(request, errors.RateLimitedError("slow", retry_after=30.0))


def test_idempotent_request_is_retried_on_5xx(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness([reply(500), reply(503), reply(200, {"jobs": {}})])
    result = h.run(flows.call(wire.endpoint_request(target, "health"), h.rt))
    assert result == {"jobs": {}}
    assert h.ops == ["health"] * 3
    assert h.slept == [0.05, 0.1]  # rand=0.5 of a 0.1 s ceiling, then 0.2 s


def test_run_is_never_resent_after_a_5xx_or_an_ambiguous_failure(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    for failure in (reply(500), errors.ReadTimeoutError("late"), errors.TransportError("reset")):
        h = harness([failure])
        with pytest.raises((errors.ServerError, errors.TransportError)):
            h.run(flows.submit(target, {"input": 1}, h.rt))
        assert h.ops == ["run"]


def test_run_is_resent_when_the_server_provably_did_not_take_it(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness(
        [
            errors.ConnectError("refused"),
            reply(429, {"error": "slow down"}, retry_after="1"),
            reply(200, job("IN_QUEUE")),
        ]
    )
    state = h.run(flows.submit(target, {"input": 1}, h.rt))
    assert (state.job_id, state.seen) == ("j1", True)
    assert h.ops == ["run"] * 3
    assert h.slept[1] >= 1.0


def test_retries_stop_after_the_configured_attempts(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness([reply(500, {"error": "down"})] * 3, retry=RetryPolicy(attempts=3))
    with pytest.raises(errors.ServerError, match="down"):
        h.run(flows.call(wire.endpoint_request(target, "health"), h.rt))
    assert len(h.sent) == 3
    assert len(h.slept) == 2


def test_non_retryable_errors_raise_at_once(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness([reply(401, {"error": "invalid API key"})])
    with pytest.raises(errors.AuthenticationError, match="invalid API key"):
        h.run(flows.call(wire.endpoint_request(target, "health"), h.rt))
    assert len(h.sent) == 1


# -- poll schedule ------------------------------------------------------------------


def test_poll_pauses_grow_geometrically_to_a_cap() -> None:
    pauses = PollPolicy(first=0.02, factor=2.0, cap=0.1, jitter=0.0).delays(lambda: 0.5)
    assert [round(next(pauses), 6) for _ in range(5)] == [0.02, 0.04, 0.08, 0.1, 0.1]


def test_poll_pauses_are_jittered_within_bounds() -> None:
    policy = PollPolicy(first=1.0, factor=1.0, cap=1.0, jitter=0.1)
    assert next(policy.delays(lambda: 0.0)) == pytest.approx(0.9)
    assert next(policy.delays(lambda: 1.0)) == pytest.approx(1.1)


def test_deadline_after() -> None:
    rt = Runtime(clock=lambda: 50.0)
    assert deadline_after(0, rt) is None
    assert deadline_after(2.5, rt) == 52.5
    with pytest.raises(ValueError, match=">= 0"):
        deadline_after(-1, rt)


# -- waiting ------------------------------------------------------------------------


def test_waiting_on_a_holding_server_needs_no_sleeps(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness([(reply(200, job("IN_PROGRESS")), 20.0), (reply(200, job("COMPLETED")), 0.3)])
    final = h.run(flows.wait(seen(target), h.rt))
    assert final["status"] == "COMPLETED"
    assert h.ops == ["status-sync", "status-sync"]
    assert h.sent[0].params == {"wait": "20000"}
    assert h.slept == []


def test_a_server_ignoring_wait_is_polled_on_the_adaptive_schedule(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    answers = [reply(200, job("IN_PROGRESS")) for _ in range(30)] + [reply(200, job("COMPLETED"))]
    h = harness(answers)
    h.run(flows.wait(seen(target), h.rt))
    assert len(h.sent) == 31
    assert h.slept[0] == pytest.approx(0.02 - h.latency)  # tens of ms, not a second
    assert h.slept == sorted(h.slept)  # grows ...
    assert max(h.slept) <= 2.0  # ... to the cap


def test_plain_polling_pauses_before_its_first_look_at_a_fresh_job(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness([reply(200, job("COMPLETED"))], poll=PollPolicy(long_poll=False))
    h.run(flows.wait(seen(target), h.rt))
    assert h.ops == ["status"]
    assert h.slept == [pytest.approx(0.02)]


def test_a_server_without_status_sync_falls_back_to_plain_status(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    def server(request: wire.Request) -> wire.Response:
        if request.op == "status-sync":
            return reply(404, {"error": "no such route"})
        return reply(200, job("COMPLETED", output=7))

    h = harness(server)
    state = seen(target)
    assert h.run(flows.output(state, h.rt, deadline=None)) == 7
    assert h.ops == ["status-sync", "status"]
    assert state.holds is False


def test_a_known_job_that_disappears_is_expired(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness(lambda request: reply(404, {"error": "job not found"}))
    with pytest.raises(errors.JobExpired) as caught:
        h.run(flows.output(seen(target), h.rt, deadline=None))
    assert (caught.value.job_id, caught.value.status) == ("j1", "EXPIRED")


def test_an_unknown_job_is_not_found(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness(lambda request: reply(404, {"error": "job not found"}))
    with pytest.raises(errors.NotFoundError, match="job not found"):
        h.run(flows.output(flows.JobState(target, "j1"), h.rt, deadline=None))


def test_the_deadline_is_real_and_the_error_keeps_the_job_id(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness(lambda request: reply(200, job("IN_PROGRESS")))
    deadline = h.clock.now + 3.0
    with pytest.raises(errors.WaitTimeout) as caught:
        h.run(flows.output(seen(target), h.rt, deadline=deadline))
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.job_id == "j1"
    assert h.clock.now <= deadline + h.latency
    # held requests never ask the server to hold past the deadline, and switch to plain
    # reads when less than a second is left
    holds = [int(r.params["wait"]) / 1000 for r in h.sent if "wait" in r.params]
    assert holds
    assert max(holds) < 3.0
    assert min(holds) >= 1.0  # never a hold shorter than servers accept
    assert h.sent[-1].op == "status"


def test_a_hanging_server_cannot_stretch_the_deadline(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness(lambda request: (reply(200, job("IN_PROGRESS")), 10_000.0))
    deadline = h.clock.now + 5.0
    with pytest.raises(errors.WaitTimeout):
        h.run(flows.output(seen(target), h.rt, deadline=deadline))
    assert all(r.timeout <= 5.0 for r in h.sent)
    assert h.clock.now <= deadline + 3 * h.latency


@pytest.mark.parametrize(
    ("final", "kind"),
    [
        (job("FAILED", error="boom"), errors.JobFailed),
        (job("CANCELLED"), errors.JobCancelled),
        (job("TIMED_OUT"), errors.JobTimedOut),
    ],
)
def test_output_raises_the_jobs_outcome(
    harness: MakeHarness, reply: Reply, target: wire.Target, final: Any, kind: type
) -> None:
    h = harness([reply(200, final)])
    with pytest.raises(kind):
        h.run(flows.output(seen(target), h.rt, deadline=None))


def test_a_final_status_already_seen_needs_no_request(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    state = seen(target)
    state.observe(job("COMPLETED", output="done"))
    h = harness([])
    assert h.run(flows.output(state, h.rt, deadline=None)) == "done"
    assert h.sent == []


def test_status_reads_afresh_and_returns_the_whole_object(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    body = job("COMPLETED", output=1, delayTime=3, executionTime=50, workerId="w")
    h = harness([reply(200, body), reply(200, body)])
    state = seen(target)
    assert h.run(flows.status(state, h.rt)) == body
    assert h.run(flows.status(state, h.rt)) == body
    assert h.ops == ["status", "status"]


# -- streaming ----------------------------------------------------------------------


def stream_reply(reply: Reply, state: str, *outputs: Any) -> wire.Response:
    return reply(200, {"id": "j1", "status": state, "stream": [{"output": o} for o in outputs]})


def test_stream_emits_every_chunk_once_and_drains_after_a_final_reply(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness(
        [
            stream_reply(reply, "IN_PROGRESS", 1, 2),
            stream_reply(reply, "IN_PROGRESS"),
            stream_reply(reply, "COMPLETED", 3),
            stream_reply(reply, "COMPLETED"),
        ]
    )
    h.run(flows.stream(seen(target), h.rt))
    assert h.emitted == [1, 2, 3]
    assert h.ops == ["stream"] * 4
    assert "wait" in h.sent[0].params
    assert "wait" not in h.sent[-1].params


@pytest.mark.parametrize("state", sorted(wire.FINAL_STATES))
def test_stream_ends_on_any_final_state(
    harness: MakeHarness, reply: Reply, target: wire.Target, state: str
) -> None:
    h = harness([stream_reply(reply, "IN_QUEUE"), reply(200, {"id": "j1", "status": state})])
    h.run(flows.stream(seen(target), h.rt))
    assert h.emitted == []
    assert len(h.sent) == 2


def test_stream_on_a_server_ignoring_wait_polls_adaptively(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    answers = [stream_reply(reply, "IN_PROGRESS") for _ in range(5)]
    h = harness([*answers, stream_reply(reply, "IN_PROGRESS", "a"), stream_reply(reply, "FAILED")])
    h.run(flows.stream(seen(target), h.rt))
    assert h.emitted == ["a"]
    assert h.slept[0] < 0.05
    assert h.slept == sorted(h.slept[:5]) + h.slept[5:]
    assert h.slept[5] < h.slept[4]  # output flowing: the schedule starts again


# -- run_sync, control --------------------------------------------------------------


def test_run_sync_done_within_the_hold_is_one_request(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness([(reply(200, job("COMPLETED", output={"ok": True})), 0.05)])
    assert h.run(flows.run_sync(target, {"input": 1}, h.rt, deadline=None)) == {"ok": True}
    assert h.ops == ["runsync"]
    assert h.sent[0].params == {"wait": "90000"}


def test_run_sync_goes_on_waiting_after_the_hold(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness(
        [(reply(200, job("IN_PROGRESS")), 9.5), (reply(200, job("FAILED", error="oom")), 1.0)]
    )
    deadline = h.clock.now + 30.0
    with pytest.raises(errors.JobFailed, match="oom") as caught:
        h.run(flows.run_sync(target, {"input": 1}, h.rt, deadline=deadline))
    assert caught.value.job_id == "j1"
    assert h.ops == ["runsync", "status-sync"]
    assert h.sent[0].params == {"wait": "29500"}


def test_run_sync_times_out_with_the_job_id(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness(lambda r: (reply(200, job("IN_QUEUE")), int(r.params.get("wait", 0)) / 1000))
    with pytest.raises(errors.WaitTimeout) as caught:
        h.run(flows.run_sync(target, {"input": 1}, h.rt, deadline=h.clock.now + 4.0))
    assert caught.value.job_id == "j1"


def test_run_sync_is_not_resent_after_a_read_timeout(
    harness: MakeHarness, target: wire.Target
) -> None:
    h = harness([errors.ReadTimeoutError("no answer")])
    with pytest.raises(errors.ReadTimeoutError):
        h.run(flows.run_sync(target, {"input": 1}, h.rt, deadline=None))
    assert h.ops == ["runsync"]


def test_cancel_records_a_final_state_and_retry_clears_it(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    state = seen(target)
    h = harness([reply(200, job("CANCELLED")), reply(200, job("IN_QUEUE"))])
    assert h.run(flows.control(state, "cancel", h.rt, timeout=3)) == job("CANCELLED")
    with pytest.raises(errors.JobCancelled):
        h.run(flows.output(state, h.rt, deadline=None))
    assert h.ops == ["cancel"]
    h.run(flows.control(state, "retry", h.rt, timeout=3))
    assert state.final is None
    assert h.ops == ["cancel", "retry"]


def test_cancel_is_retried_but_retry_is_not(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    h = harness([reply(502), reply(200, job("CANCELLED"))])
    h.run(flows.control(seen(target), "cancel", h.rt, timeout=3))
    assert h.ops == ["cancel", "cancel"]
    h = harness([reply(502)])
    with pytest.raises(errors.ServerError):
        h.run(flows.control(seen(target), "retry", h.rt, timeout=3))
    assert h.ops == ["retry"]


def test_cancel_of_a_finished_job_records_nothing(
    harness: MakeHarness, reply: Reply, target: wire.Target
) -> None:
    state = seen(target)
    h = harness([reply(200, job("COMPLETED")), reply(200, job("COMPLETED", output=3))])
    h.run(flows.control(state, "cancel", h.rt, timeout=3))
    assert state.final is None
    assert h.run(flows.output(state, h.rt, deadline=None)) == 3
