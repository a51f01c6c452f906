"""Nothing lost, nothing twice: kill -9 a worker holding 1,000 jobs, start another, and
every request gets exactly one final reply from exactly one submission; the ambiguous
window follows the route's delivery policy."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bridgekit import cleanup, make_setup
from conftest import assert_no_late_replies, start_worker, stop_processes, wait_ready

from bridge.emulator.settings import EmulatorSettings, EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator, wait_until

JOBS = 1000
# From the kill to every job followed again. The design's 5 s is for a surviving worker
# (bench/ measures it); here a new worker process must boot first, wait out the dead
# one's 3 s lease and adopt 1,020 requests (5 s in all on an idle machine), on a machine
# that may have one core taken by something else.
FOLLOWED_AGAIN_S = 20.0


@pytest.fixture(scope="module")
def big_emulator() -> Iterator[EmulatorHandle]:
    settings = EmulatorSettings.load(
        host="127.0.0.1",
        port=0,
        templates=[TemplateConfig(id="echo", imageName="echo")],
        endpoints=[
            EndpointConfig(
                id="echo",
                templateId="echo",
                workersMax=2000,
                coldStartMs=0,
                scalerType="REQUEST_COUNT",
                scalerValue=1,
                idleTimeout=60,
            ),
        ],
    )
    with running_emulator(settings) as handle:
        yield handle


def status_requests(emulator: EmulatorHandle) -> int:
    """How many times the endpoint was asked about a job (plain, held or streamed)."""
    requests = emulator.stats("echo")["requests"]
    return sum(requests.get(op, 0) for op in ("status", "status-sync", "stream"))


def test_kill_9_with_1000_jobs_in_flight(
    big_emulator: EmulatorHandle, redis_url: str, tmp_path: Path
) -> None:
    setup = make_setup(big_emulator, redis_url, tmp_path / "worker.log")
    first = start_worker(setup.env, setup.log)
    second = None
    try:
        wait_ready(setup.app, first, setup.log)
        sent = [setup.producer.send("echo", {"sleep_ms": 30_000, "k": k}) for k in range(JOBS)]
        celery_door = [
            setup.app.send_task("bridge.run", kwargs={"route": "echo", "input": {"c": c,
                                "sleep_ms": 30_000}}) for c in range(20)
        ]  # fmt: skip
        wait_until(
            lambda: big_emulator.stats("echo")["submissions"] >= JOBS + 20,
            timeout=60, interval=0.5,
        )  # fmt: skip
        ids = [rid for rid, _ in sent]
        try:
            wait_until(lambda: setup.states(ids) == {b"submitted": JOBS}, timeout=15, interval=0.5)
        except AssertionError:
            raise AssertionError(f"not all in flight: {setup.states(ids)}") from None
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
        asked = status_requests(big_emulator)
        second = start_worker(setup.env, setup.log)
        wait_ready(setup.app, second, setup.log)
        # Followed again: the dead worker asks nothing; the new one holds one status request
        # per job (each held up to 20 s, and no job ends that soon), so the endpoint's count
        # grows by one per job it follows.
        wait_until(
            lambda: status_requests(big_emulator) - asked >= JOBS + 20, timeout=60, interval=0.1
        )
        followed_in = time.monotonic() - killed_at
        replies: dict[str, list[dict[str, Any]]] = {}
        for request_id, reply_to in sent:
            replies[request_id] = list(setup.producer.replies(reply_to, timeout=60))
        answered_in = time.monotonic() - killed_at
        outputs = [r.get(timeout=60) for r in celery_door]
        assert_no_late_replies(setup.redis, setup.settings, [reply_to for _, reply_to in sent])
    finally:
        stop_processes([p for p in (first, second) if p is not None])
        cleanup(setup)
    print(
        f"\nkill -9 with {JOBS + 20} jobs in flight: followed again {followed_in:.1f} s and "
        f"answered {answered_in:.1f} s after the kill"
    )
    statuses = [r[-1]["status"] if r else "MISSING" for r in replies.values()]
    assert statuses == ["COMPLETED"] * JOBS
    assert all(len(r) == 1 for r in replies.values())
    assert [o["c"] for o in outputs] == list(range(20))
    stats = big_emulator.stats("echo")
    assert stats["submissions"] == JOBS + 20  # exactly one submission per request
    assert followed_in <= FOLLOWED_AGAIN_S


@pytest.mark.parametrize(
    ("delivery", "expected"), [("at_least_once", "COMPLETED"), ("at_most_once", "FAILED")]
)
def test_ambiguous_window_follows_the_route_policy(
    big_emulator: EmulatorHandle, redis_url: str, tmp_path: Path, delivery: str, expected: str
) -> None:
    setup = make_setup(big_emulator, redis_url, tmp_path / "worker.log", delivery=delivery)
    prefix = setup.settings.key_prefix
    request_id = f"amb-{uuid.uuid4()}"
    reply_to = f"{prefix}:reply:{request_id}"
    record = {
        "id": request_id, "route": "echo", "input": {"amb": 1}, "mode": "poll",
        "reply_to": reply_to, "accepted_at": time.time(),
    }  # fmt: skip
    # A worker that died between sending /run and recording the job id left this:
    setup.redis.hset(f"{prefix}:req:{request_id}", mapping={
        "state": "submitting", "route": "echo", "request": json.dumps(record),
        "owner": "dead-worker", "created": str(time.time()),
    })  # fmt: skip
    setup.redis.sadd(f"{prefix}:inflight:echo", request_id)
    before = big_emulator.stats("echo")["submissions"]
    worker = start_worker(setup.env, setup.log)
    try:
        wait_ready(setup.app, worker, setup.log)
        result = list(setup.producer.replies(reply_to, timeout=30))[-1]
        if delivery == "at_most_once":  # the dead letter follows the reply
            wait_until(lambda: setup.redis.xlen(setup.settings.dlq_stream) > 0, timeout=10)
        letters = setup.redis.xrange(setup.settings.dlq_stream)
    finally:
        stop_processes([worker])
        cleanup(setup)
    assert result["status"] == expected
    submissions = big_emulator.stats("echo")["submissions"] - before
    if delivery == "at_least_once":  # sent once more: the endpoint saw one submission
        assert (result["output"], submissions) == ({"amb": 1}, 1)
        assert letters == []
    else:  # never sent again, and dead-lettered
        assert (result["reason"], submissions) == ("ambiguous_submit", 0)
        assert [f[b"reason"] for _, f in letters] == [b"ambiguous_submit"]


def test_a_request_this_worker_lost_track_of_is_resumed(
    big_emulator: EmulatorHandle, redis_url: str, tmp_path: Path
) -> None:
    setup = make_setup(big_emulator, redis_url, tmp_path / "worker.log", {"full_recovery_s": "1"})
    worker = start_worker(setup.env, setup.log)
    prefix = setup.settings.key_prefix
    try:
        wait_ready(setup.app, worker, setup.log)
        request_id = f"lost-{uuid.uuid4()}"
        reply_to = f"{prefix}:reply:{request_id}"
        record = {
            "id": request_id, "route": "echo", "input": {"lost": 1}, "mode": "poll",
            "reply_to": reply_to, "accepted_at": time.time() - 60,
        }  # fmt: skip
        # Recorded by this very worker a minute ago, yet followed by nobody:
        setup.redis.hset(f"{prefix}:req:{request_id}", mapping={
            "state": "accepted", "route": "echo", "request": json.dumps(record),
            "owner": f"{socket.gethostname()}:{worker.pid}", "created": str(time.time() - 60),
        })  # fmt: skip
        setup.redis.sadd(f"{prefix}:inflight:echo", request_id)
        result = list(setup.producer.replies(reply_to, timeout=30))
    finally:
        stop_processes([worker])
        cleanup(setup)
    assert [(r["status"], r.get("output")) for r in result] == [("COMPLETED", {"lost": 1})]
