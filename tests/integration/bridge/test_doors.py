"""Both doors, all four modes, chunk order, cancel, revoke, a chain, health and purge:
a real Redis, the emulator on a socket and a real Celery worker (subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
from celery import signature
from conftest import Bridge

from bridge.emulator.testing import EmulatorHandle, wait_until
from bridge.errors import JobCancelled, JobFailed, RequestRejected


def test_json_door_poll(bridge: Bridge) -> None:
    request_id, reply_to = bridge.producer.send("echo", {"prompt": "hi", "sleep_ms": 50})
    result = bridge.result(reply_to)
    assert (result["id"], result["status"]) == (request_id, "COMPLETED")
    assert result["output"] == {"prompt": "hi", "sleep_ms": 50}
    assert result["job_id"].endswith("-u1")
    assert result["timings"]["execution_ms"] >= 50


def test_json_door_stream_chunks_in_order_then_result(bridge: Bridge) -> None:
    _, reply_to = bridge.producer.send("stream", {"n": 8, "interval_ms": 20})
    replies = bridge.replies(reply_to)
    chunks, result = replies[:-1], replies[-1]
    assert [c["type"] for c in chunks] == ["chunk"] * 8
    assert [c["seq"] for c in chunks] == list(range(8))
    assert [c["output"] for c in chunks] == [{"i": k} for k in range(8)]
    assert result["status"] == "COMPLETED"
    assert result["output"] == [{"i": k} for k in range(8)]


@pytest.mark.parametrize("mode", ["poll", "sync", "stream"])
def test_every_mode_completes(bridge: Bridge, mode: str) -> None:
    _, reply_to = bridge.producer.send("echo", {"m": mode}, mode=mode)
    result = bridge.result(reply_to)
    assert (result["status"], result["output"]) == ("COMPLETED", {"m": mode})


def test_failed_job_reply_carries_the_endpoint_error(bridge: Bridge) -> None:
    _, reply_to = bridge.producer.send("fail", {"message": "no GPU today"})
    result = bridge.result(reply_to)
    assert result["status"] == "FAILED"
    assert "no GPU today" in result["error"]


def test_duplicate_id_is_not_submitted_twice(bridge: Bridge, emulator: EmulatorHandle) -> None:
    before = emulator.stats("echo")["submissions"]
    request_id = f"dup-{uuid.uuid4()}"
    _, reply_to = bridge.producer.send("echo", {"x": 1}, request_id=request_id)
    bridge.producer.send("echo", {"x": 1}, request_id=request_id, reply_to=reply_to)
    assert bridge.result(reply_to)["status"] == "COMPLETED"
    bridge.assert_no_late_reply(reply_to)  # one final reply only, the copy handled too
    assert emulator.stats("echo")["submissions"] == before + 1


def test_bad_message_is_answered_dead_lettered_and_consumer_goes_on(bridge: Bridge) -> None:
    reply_to = f"{bridge.settings.key_prefix}:reply:bad"
    bad = {"id": "bad-1", "route": "echo", "input": "not an object", "reply_to": reply_to}
    bridge.redis.xadd(bridge.settings.requests_stream, {"payload": json.dumps(bad)})
    bridge.redis.xadd(bridge.settings.requests_stream, {"payload": b"\xff{"})
    result = bridge.result(reply_to)
    assert (result["status"], result["reason"]) == ("REJECTED", "invalid_envelope")
    assert "input" in result["message"]
    _, good = bridge.producer.send("echo", {"after": "bad"})
    assert bridge.result(good)["status"] == "COMPLETED"
    letters = bridge.redis.xrange(bridge.settings.dlq_stream)
    reasons = [fields[b"reason"] for _, fields in letters]
    assert reasons.count(b"invalid_envelope") >= 1
    assert reasons.count(b"invalid_json") >= 1


def test_webhook_mode_without_a_receiver_is_rejected(bridge: Bridge) -> None:
    _, reply_to = bridge.producer.send("echo", {}, mode="webhook")
    result = bridge.result(reply_to)
    assert (result["status"], result["reason"]) == ("REJECTED", "webhook_unavailable")
    assert "BRIDGE_WEBHOOK_URL" in result["message"]


def test_unknown_route_is_rejected(bridge: Bridge) -> None:
    _, reply_to = bridge.producer.send("nope", {})
    result = bridge.result(reply_to)
    assert (result["status"], result["reason"]) == ("REJECTED", "unknown_route")


def test_celery_door_get_returns_output_and_shows_state(bridge: Bridge) -> None:
    # long enough to be seen running even when the test process gets little CPU
    result = bridge.run("echo", {"sleep_ms": 3000, "v": 2})
    wait_until(lambda: result.state in ("IN_QUEUE", "IN_PROGRESS"), timeout=30)
    assert result.info["job_id"].endswith("-u1")
    assert result.get(timeout=30) == {"sleep_ms": 3000, "v": 2}
    assert result.state == "SUCCESS"


def test_celery_door_failure_raises_typed_error(bridge: Bridge) -> None:
    with pytest.raises(JobFailed) as info:
        bridge.run("fail", {"message": "bad weights"}).get(timeout=30)
    assert "bad weights" in str(info.value.error)
    assert info.value.job_id is not None


def test_celery_door_rejects_bad_arguments(bridge: Bridge) -> None:
    with pytest.raises(RequestRejected) as info:
        bridge.run("echo", "not an object").get(timeout=30)  # type: ignore[arg-type]
    assert info.value.reason == "invalid_arguments"


def test_chain_continues_with_the_output(bridge: Bridge) -> None:
    first = signature("bridge.run", kwargs={"route": "echo", "input": {"step": 1}}, app=bridge.app)
    then = signature("celery.accumulate", app=bridge.app)
    result = (first | then).apply_async()
    assert result.get(timeout=30) == [{"step": 1}]


def test_a_countdown_goes_through_celerys_path_and_is_answered(bridge: Bridge) -> None:
    """A countdown (as a retry after a deferral has) takes Celery's own strategy, its
    timer and its pool, not the short path to the loop."""
    sent = time.monotonic()
    result = bridge.app.send_task(
        "bridge.run", kwargs={"route": "echo", "input": {"later": True}}, countdown=1
    )
    assert result.get(timeout=30) == {"later": True}
    assert time.monotonic() - sent >= 1.0


def test_flower_sees_each_bridge_run_received_started_and_succeeded(bridge: Bridge) -> None:
    """Task events, as Flower reads them from the broker, for hand-overs on the short
    path and on Celery's (a countdown)."""
    seen: dict[str, list[str]] = {}
    listening = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        listening.set()  # any event (a worker heartbeat): the subscription is live
        if "uuid" in event:
            seen.setdefault(event["uuid"], []).append(event["type"])

    with bridge.app.connection_for_read() as conn:
        receiver = bridge.app.events.Receiver(conn, handlers={"*": on_event})
        capture = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        capture.start()
        try:
            assert listening.wait(30), "no event at all from the worker"
            results = [bridge.run("echo", {"n": 1}),
                       bridge.app.send_task("bridge.run", kwargs={"route": "echo", "input": {}},
                                            countdown=0.5)]  # fmt: skip
            for result in results:
                result.get(timeout=30)
            wait_until(lambda: all("task-succeeded" in seen.get(r.id, []) for r in results),
                       timeout=30)  # fmt: skip
        finally:
            receiver.should_stop = True
            capture.join(10)
    for result in results:
        events = set(seen[result.id])
        assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= events


def assert_cancelled_at_the_endpoint(
    emulator: EmulatorHandle, job_id: str, cancels_before: int, endpoint: str = "echo"
) -> None:
    """The endpoint itself says so: it received a cancel, and the job ended CANCELLED."""
    wait_until(lambda: emulator.stats(endpoint)["cancels"] > cancels_before, timeout=30)
    with emulator.client() as api:
        status = api.get(f"/{endpoint}/status/{job_id}").json()
    assert status["status"] == "CANCELLED", status


def test_revoke_cancels_the_gpu_job(bridge: Bridge, emulator: EmulatorHandle) -> None:
    cancels = emulator.stats("echo")["cancels"]
    result = bridge.run("echo", {"sleep_ms": 60_000})
    wait_until(lambda: result.state == "IN_PROGRESS", timeout=30)
    job_id = result.info["job_id"]
    result.revoke()
    with pytest.raises(JobCancelled, match="cancel"):
        result.get(timeout=30)
    assert_cancelled_at_the_endpoint(emulator, job_id, cancels)


def test_cancel_before_submission_never_submits(bridge: Bridge, emulator: EmulatorHandle) -> None:
    before = emulator.stats("echo")["submissions"]
    request_id = f"early-{uuid.uuid4()}"
    assert bridge.producer.cancel(request_id) == "unknown"
    _, reply_to = bridge.producer.send("echo", {}, request_id=request_id)
    result = bridge.result(reply_to)
    assert (result["status"], result["reason"]) == ("CANCELLED", "cancelled")
    assert result["job_id"] is None
    assert emulator.stats("echo")["submissions"] == before


def wait_submitted(bridge: Bridge, request_id: str) -> None:
    key = f"{bridge.settings.key_prefix}:req:{request_id}"
    wait_until(lambda: bridge.redis.hget(key, "state") == b"submitted", timeout=30)


def test_json_cancel_message_in_flight(bridge: Bridge, emulator: EmulatorHandle) -> None:
    cancels = emulator.stats("echo")["cancels"]
    request_id, reply_to = bridge.producer.send("echo", {"sleep_ms": 60_000})
    wait_submitted(bridge, request_id)
    cancel = {"type": "cancel", "id": request_id}
    bridge.redis.xadd(bridge.settings.requests_stream, {"payload": json.dumps(cancel)})
    result = bridge.result(reply_to)
    assert (result["status"], result["reason"]) == ("CANCELLED", "cancelled")
    assert_cancelled_at_the_endpoint(emulator, result["job_id"], cancels)


def test_cli_cancel_in_flight(bridge: Bridge, emulator: EmulatorHandle) -> None:
    cancels = emulator.stats("echo")["cancels"]
    request_id, reply_to = bridge.producer.send("echo", {"sleep_ms": 60_000})
    wait_submitted(bridge, request_id)
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "cancel", request_id],
        env=bridge.env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = bridge.result(reply_to)
    assert result["status"] == "CANCELLED"
    assert_cancelled_at_the_endpoint(emulator, result["job_id"], cancels)
    missing = subprocess.run(
        [sys.executable, "-m", "bridge", "cancel", f"missing-{uuid.uuid4()}"],
        env=bridge.env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert missing.returncode == 1


def test_health_task_stores_snapshot_and_cli_shows_it(bridge: Bridge) -> None:
    snapshot: dict[str, Any] = bridge.app.send_task("bridge.health", args=("echo",)).get(timeout=30)
    assert snapshot["ok"] is True
    assert set(snapshot["health"]["jobs"]) >= {"completed", "inQueue"}
    stored = json.loads(bridge.redis.get(f"{bridge.settings.key_prefix}:health:echo") or b"{}")
    assert stored["at"] == snapshot["at"]
    shown = subprocess.run(
        [sys.executable, "-m", "bridge", "health", "echo"],
        env={**bridge.env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    # the table's one body row is the stored snapshot, figure by figure
    rows = [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in shown.stdout.splitlines() if line.startswith("│")]  # fmt: skip
    jobs, workers = snapshot["health"]["jobs"], snapshot["health"]["workers"]
    assert len(rows) == 1, shown.stdout
    route, endpoint, _age, *figures = rows[0]
    assert (route, endpoint) == ("echo", "echo")
    assert figures[:5] == [
        *(str(jobs[k]) for k in ("inQueue", "inProgress", "completed", "failed")),
        f"{workers['idle']}/{workers['running']}",
    ], shown.stdout


def test_purge_task_ends_queued_requests_as_purged(
    bridge: Bridge, emulator: EmulatorHandle
) -> None:
    before = emulator.stats("external")
    sent = [bridge.producer.send("external", {"k": k}) for k in range(3)]
    for request_id, _ in sent:
        wait_submitted(bridge, request_id)
    purged = bridge.app.send_task("bridge.purge", args=("external",)).get(timeout=30)
    after = emulator.stats("external")
    # the endpoint purged once, and the bridge reports what the endpoint removed (our
    # three, and whatever another module left queued on the shared emulator)
    assert after["purges"] == before["purges"] + 1
    assert purged["removed"] == after["purged_jobs"] - before["purged_jobs"] >= 3
    with emulator.client() as api:
        for _, reply_to in sent:
            result = bridge.result(reply_to)
            assert (result["status"], result["reason"]) == ("CANCELLED", "purged")
            status = api.get(f"/external/status/{result['job_id']}").json()
            assert status["status"] == "CANCELLED", status


def test_many_concurrent_jobs_do_not_hold_celery_slots(
    bridge: Bridge, emulator: EmulatorHandle
) -> None:
    """500 two-second jobs through a worker with 4 Celery threads: if a job held its slot
    while it ran, at most 4 would run at once at the endpoint. The endpoint's own count of
    running jobs shows how many ran side by side."""
    emulator.call(lambda: emulator.engine.update_endpoint("echo", workersMax=600))
    peak = 0
    try:
        start = time.monotonic()
        sent = [bridge.run("echo", {"sleep_ms": 2000, "k": k}) for k in range(500)]
        with emulator.client() as api:
            while not all(result.ready() for result in sent):
                assert time.monotonic() - start < 120, "500 jobs not done in 120 s"
                running = api.get("/echo/health").json()["jobs"]["inProgress"]
                peak = max(peak, running)
        outputs = [result.get(timeout=60) for result in sent]
        elapsed = time.monotonic() - start
    finally:
        emulator.call(lambda: emulator.engine.update_endpoint("echo", workersMax=100))
    assert [o["k"] for o in outputs] == list(range(500))
    print(f"500 concurrent 2 s jobs through 4 Celery threads: {elapsed:.1f} s, {peak} at once")
    assert peak >= 50  # far more than the 4 slots
