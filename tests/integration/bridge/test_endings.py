"""The endings nothing else reaches end to end (issue 11, item 7), each counted at the
emulator: a request's ``deadline_s`` (TIMED_OUT, and the endpoint got the cancel), a job
the endpoint forgot (EXPIRED), ``bridge.reap`` resuming a dead worker's requests, a purge
scheduled by ``bridge beat`` and executed, and a webhook that never arrives (the safety
poll finishes the request). RabbitMQ redelivery is in test_rabbitmq_redelivery.py, a
purge schedule faster than the purge budget in test_purge_schedule.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from bridgekit import cleanup, make_setup
from conftest import (
    Bridge,
    MakeBridge,
    assert_no_late_replies,
    start_worker,
    stop_processes,
    wait_ready,
)
from promisekit import (
    add_endpoint,
    dead_letters,
    drain,
    finals,
    free_port,
    job_statuses,
    jobs_by_marker,
    routes_setup,
)

from bridge.core.keys import keys_for
from bridge.emulator.settings import EmulatorSettings
from bridge.emulator.testing import EmulatorHandle, running_emulator, wait_until
from bridge.errors import JobCancelled, JobTimedOut

DEADLINE_S = 2


@pytest.fixture(scope="module")
def endpoints(emulator: EmulatorHandle) -> dict[str, str]:
    """Route name -> endpoint of its own; ``purge``'s has no workers (jobs stay queued)."""
    return {
        "deadline": add_endpoint(emulator, "deadline"),
        "forget": add_endpoint(emulator, "forget"),
        "purge": add_endpoint(emulator, "purge", workersMax=0),
    }


@pytest.fixture(scope="module")
def ends(make_bridge: MakeBridge, endpoints: dict[str, str]) -> Bridge:
    """One worker, its routes in a routes file (beat reads it too): ``purge`` is purged
    every 5 s by beat's schedule (RunPod's /purge-queue limit: 2 per 10 s)."""
    routes = {name: {"endpoint_id": eid} for name, eid in endpoints.items()}
    routes["purge"]["purge_every_s"] = 5
    return make_bridge(config_file=True, routes=routes)


def test_deadline_times_out_and_cancels_the_job(
    ends: Bridge, emulator: EmulatorHandle, endpoints: dict[str, str]
) -> None:
    endpoint_id = endpoints["deadline"]
    started = time.monotonic()
    _, json_reply = ends.producer.send("deadline", {"m": "json", "sleep_ms": 60_000},
                                       deadline_s=DEADLINE_S)  # fmt: skip
    celery_reply = ends.producer.keys.reply(f"deadline-{uuid.uuid4()}")
    result = ends.run("deadline", {"m": "celery", "sleep_ms": 60_000}, deadline_s=DEADLINE_S,
                      reply_to=celery_reply)  # fmt: skip
    with pytest.raises(JobTimedOut, match="deadline"):
        result.get(timeout=60)
    got = [finals(drain(ends.redis, to, timeout=60)) for to in (json_reply, celery_reply)]
    took = time.monotonic() - started
    assert_no_late_replies(ends.redis, ends.settings, [json_reply, celery_reply])
    assert [[(r["status"], r["reason"]) for r in one] for one in got] == [
        [("TIMED_OUT", "deadline")]
    ] * 2
    assert took >= DEADLINE_S - 0.5, f"ended after {took:.1f} s, before its deadline"
    stats = emulator.stats(endpoint_id)
    assert (stats["submissions"], stats["cancels"]) == (2, 2), stats
    assert job_statuses(emulator, endpoint_id) == {"CANCELLED": 2}


def test_a_job_the_endpoint_forgot_ends_expired(
    ends: Bridge, emulator: EmulatorHandle, endpoints: dict[str, str]
) -> None:
    """The job's own TTL (``policy.ttl``, 2 s) runs out while it runs: the endpoint
    forgets it (404), as RunPod does, and the request ends EXPIRED ``job_lost``."""
    endpoint_id = endpoints["forget"]
    request_id, reply_to = ends.producer.send(
        "forget", {"m": "forgotten", "sleep_ms": 30_000}, policy={"ttl": 2000}
    )
    got = finals(drain(ends.redis, reply_to, timeout=60))
    ends.assert_no_late_reply(reply_to)
    assert [(r["status"], r["reason"]) for r in got] == [("EXPIRED", "job_lost")], got
    stats = emulator.stats(endpoint_id)
    assert (stats["submissions"], stats["cancels"]) == (1, 0), stats
    assert jobs_by_marker(emulator, endpoint_id, "m") == {}  # the endpoint holds no job
    stream = ends.settings.dlq_stream
    wait_until(lambda: request_id in dead_letters(ends.redis, stream, "job_lost"), timeout=30)
    assert dead_letters(ends.redis, stream, "job_lost").count(request_id) == 1


def test_beat_purges_on_schedule_and_purged_requests_end_cancelled(
    ends: Bridge, emulator: EmulatorHandle, endpoints: dict[str, str], tmp_path: Path
) -> None:
    endpoint_id = endpoints["purge"]
    sent = [ends.producer.send("purge", {"m": f"purge-{k}"}) for k in range(5)]
    celery_reply = ends.producer.keys.reply(f"purge-{uuid.uuid4()}")
    result = ends.run("purge", {"m": "purge-celery"}, reply_to=celery_reply)
    wait_until(lambda: job_statuses(emulator, endpoint_id) == {"IN_QUEUE": 6}, timeout=30)
    assert emulator.stats(endpoint_id)["purges"] == 0
    log = tmp_path / "beat.log"
    with log.open("wb") as out:
        beat = subprocess.Popen(
            [sys.executable, "-m", "bridge", "beat", "--schedule", str(tmp_path / "schedule")],
            env=ends.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with pytest.raises(JobCancelled, match="purged"):
            result.get(timeout=60)
        got = [finals(drain(ends.redis, to, timeout=60)) for _, to in sent]
        got.append(finals(drain(ends.redis, celery_reply, timeout=60)))
        assert_no_late_replies(ends.redis, ends.settings, [to for _, to in sent] + [celery_reply])
    finally:
        stop_processes([beat])
    assert "Sending due task bridge-purge-purge" in log.read_text(), log.read_text()[-2000:]
    assert [[(r["status"], r["reason"]) for r in one] for one in got] == [
        [("CANCELLED", "purged")]
    ] * 6
    stats = emulator.stats(endpoint_id)
    assert stats["purges"] >= 1, stats
    assert stats["purged_jobs"] == 6, stats
    assert (stats["submissions"], stats["cancels"]) == (6, 0), stats
    assert job_statuses(emulator, endpoint_id) == {"CANCELLED": 6}


def test_reap_resumes_a_dead_workers_requests(
    emulator: EmulatorHandle, redis_url: str, tmp_path: Path
) -> None:
    """Worker A follows 10 requests and is killed. Worker B runs with a 600 s lease and
    full look, so its own recovery loop leaves A's requests alone (it counts an owner as
    dead after 600 s); only ``bridge.reap`` (a full look) can take them over."""
    endpoint_id = add_endpoint(emulator, "reap")
    setup = make_setup(emulator, redis_url, tmp_path / "worker.log", endpoint_id=endpoint_id)
    patient = {**setup.env, "BRIDGE_LEASE_TTL_S": "600", "BRIDGE_FULL_RECOVERY_S": "600",
               "BRIDGE_ADOPT_AFTER_S": "600"}  # fmt: skip
    keys = keys_for(setup.settings)
    a = start_worker(setup.env, setup.log)
    b = None
    try:
        wait_ready(setup.app, a, setup.log)
        sent = [setup.producer.send("echo", {"m": f"reap-{k}", "sleep_ms": 6000})
                for k in range(10)]  # fmt: skip
        ids = [rid for rid, _ in sent]
        wait_until(lambda: emulator.stats(endpoint_id)["submissions"] == 10, timeout=30)
        # the job ids are recorded too: a kill now leaves nothing ambiguous
        wait_until(lambda: setup.states(ids) == {b"submitted": 10}, timeout=30)
        # B starts while A lives, so its first full look (at boot) adopts nothing
        node = f"reap-b-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        b = start_worker(patient, setup.log, celery_args=("-n", node))
        wait_ready(setup.app, b, setup.log, node=node)  # B itself, not A, answers
        # B renews its lease and then, at once, takes its first full look: once its
        # lease exists that look is under way while A lives (a B whose boot lagged until
        # A's lease expired would adopt A's requests itself, and the reap would find none)
        wait_until(lambda: setup.redis.exists(keys.owner(f"{socket.gethostname()}:{b.pid}")),
                   timeout=30)  # fmt: skip
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        owner_key = keys.owner(f"{socket.gethostname()}:{a.pid}")
        wait_until(lambda: not setup.redis.exists(owner_key), timeout=30)  # A's lease is gone
        assert all(setup.redis.llen(to) == 0 for _, to in sent), "answered before the reap"
        reaped = setup.app.send_task("bridge.reap").get(timeout=60)
        got = {rid: finals(drain(setup.redis, to, timeout=60)) for rid, to in sent}
    finally:
        stop_processes([p for p in (a, b) if p is not None])
        cleanup(setup)
    assert reaped == 10
    assert [(len(r), r[0]["status"]) for r in got.values()] == [(1, "COMPLETED")] * 10
    # followed again, not sent again: one job per request at the endpoint
    assert jobs_by_marker(emulator, endpoint_id, "m") == Counter(
        {f"reap-{k}": 1 for k in range(10)}
    )
    assert emulator.stats(endpoint_id)["submissions"] == 10


@pytest.fixture
def hookless() -> Iterator[EmulatorHandle]:
    """An emulator that gives up on a webhook quickly (3 attempts, 0.1 s apart)."""
    settings = EmulatorSettings.load(host="127.0.0.1", port=0, webhook_retry_interval_s=0.1,
                                     webhook_timeout_s=2)  # fmt: skip
    with running_emulator(settings) as handle:
        yield handle


def test_a_webhook_that_never_arrives_is_covered_by_the_safety_poll(
    hookless: EmulatorHandle, redis_url: str, tmp_path: Path
) -> None:
    """Mode webhook with a receiver URL where nothing listens: every webhook fails (the
    emulator counts it), and the 1 s safety poll finishes each request."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # no receiver runs there
    setup = routes_setup(hookless, redis_url, tmp_path / "worker.log",
                         {"echo": {"webhook_safety_poll_s": 1.0}},
                         {"webhook_url": nowhere})  # fmt: skip
    worker = start_worker(setup.env, setup.log)
    try:
        wait_ready(setup.app, worker, setup.log)
        sent = [setup.producer.send("echo", {"m": f"hook-{k}", "sleep_ms": 300}, mode="webhook")
                for k in range(3)]  # fmt: skip
        got = [finals(drain(setup.redis, to, timeout=60)) for _, to in sent]
        wait_until(lambda: hookless.stats("echo")["webhooks_failed"] == 3, timeout=30)
    finally:
        stop_processes([worker])
        cleanup(setup)
    assert [[(r["status"], r["output"]["m"]) for r in one] for one in got] == [
        [("COMPLETED", f"hook-{k}")] for k in range(3)
    ]
    stats = hookless.stats("echo")
    assert (stats["webhooks_sent"], stats["webhooks_failed"]) == (0, 3), stats
    assert stats["requests"].get("status", 0) >= 3  # the safety poll read each job
    assert stats["submissions"] == 3
