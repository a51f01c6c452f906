"""A route's ``max_in_flight`` counts across the fleet (issue 13, item 2): three worker
processes share a cap of 5, and the endpoint never holds more than 5 of the route's jobs
at once, by its own count (``peak_open_jobs``); all 60 requests, through both doors,
complete once each (each job's input names its request)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from bridgekit import Setup, cleanup, make_setup
from conftest import start_worker, stop_processes, wait_ready
from promisekit import add_endpoint, drain, finals, jobs_by_marker

from bridge.emulator.testing import EmulatorHandle, wait_until
from bridge.producer import JsonDoorClient

CAP = 5
WORKERS = 3
JSON_REQUESTS, CELERY_REQUESTS = 48, 12
JOB_MS = 400  # long enough that every worker holds jobs at the same time


@pytest.fixture
def fleet(emulator: EmulatorHandle, redis_url: str, tmp_path: Path) -> Iterator[tuple[Setup, str]]:
    endpoint = add_endpoint(emulator, "fleetcap")
    setup = make_setup(emulator, redis_url, tmp_path / "workers.log",
                       endpoint_id=endpoint, max_in_flight=CAP)  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    nodes = [f"cap{n}-{tag}@{socket.gethostname()}" for n in range(WORKERS)]
    procs = [start_worker(setup.env, setup.log, celery_args=("-n", node)) for node in nodes]
    try:
        for proc, node in zip(procs, nodes, strict=True):
            wait_ready(setup.app, proc, setup.log, timeout=60, node=node)
        yield setup, endpoint
    finally:
        stop_processes(procs)
        cleanup(setup)
        emulator.call(emulator.engine.delete_endpoint, endpoint)


def test_three_workers_share_one_max_in_flight(
    fleet: tuple[Setup, str], emulator: EmulatorHandle
) -> None:
    setup, endpoint = fleet
    sent = [setup.producer.send("echo", {"sleep_ms": JOB_MS, "m": f"j{k}"})
            for k in range(JSON_REQUESTS)]  # fmt: skip
    tasks = [
        setup.app.send_task("bridge.run", kwargs={"route": "echo",
                            "input": {"sleep_ms": JOB_MS, "m": f"c{k}"}})
        for k in range(CELERY_REQUESTS)
    ]  # fmt: skip
    finals = [list(setup.producer.replies(reply_to, timeout=90)) for _, reply_to in sent]
    outputs = [task.get(timeout=90) for task in tasks]
    stats = emulator.stats(endpoint)
    print(f"\npeak jobs at the endpoint: {stats['peak_open_jobs']} (cap {CAP})")
    assert [[r["status"] for r in replies] for replies in finals] == [["COMPLETED"]] * len(sent)
    assert [o["m"] for o in outputs] == [f"c{k}" for k in range(CELERY_REQUESTS)]
    assert stats["peak_open_jobs"] == CAP  # never more, and the cap was used
    per_request = jobs_by_marker(emulator, endpoint, "m")
    assert len(per_request) == JSON_REQUESTS + CELERY_REQUESTS
    assert set(per_request.values()) == {1}  # one job per request
    assert stats["submissions"] == JSON_REQUESTS + CELERY_REQUESTS


def test_a_cancel_while_waiting_for_a_fleet_slot_ends_it_unsent(
    emulator: EmulatorHandle, redis_url: str, tmp_path: Path
) -> None:
    """Cap 1, two workers: ``a`` holds the slot with a long job; the request ``b`` takes
    (it reads a stream of its own) waits for the slot in ``b``, is cancelled there, and
    is answered CANCELLED while ``a``'s job still runs, never sent."""
    endpoint = add_endpoint(emulator, "slotcancel")
    setup = make_setup(emulator, redis_url, tmp_path / "workers.log",
                       endpoint_id=endpoint, max_in_flight=1)  # fmt: skip
    b_stream = f"{setup.settings.key_prefix}:b"
    b_producer = JsonDoorClient(setup.settings.model_copy(update={"requests_stream": b_stream}),
                                setup.redis)  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    nodes = [f"{n}-{tag}@{socket.gethostname()}" for n in ("a", "b")]
    a = start_worker(setup.env, setup.log, celery_args=("-n", nodes[0]))
    b = start_worker({**setup.env, "BRIDGE_REQUESTS_STREAM": b_stream}, setup.log,
                     celery_args=("-n", nodes[1]))  # fmt: skip
    try:
        for proc, node in zip((a, b), nodes, strict=True):
            wait_ready(setup.app, proc, setup.log, timeout=60, node=node)
        long_id, long_to = setup.producer.send("echo", {"m": "long", "sleep_ms": 60_000})
        wait_until(lambda: setup.states([long_id]) == {b"submitted": 1}, timeout=30)
        waiting_id, waiting_to = b_producer.send("echo", {"m": "waiting"})
        wait_until(lambda: setup.redis.hget(setup.producer.keys.request(waiting_id), "owner")
                   is not None, timeout=30)  # fmt: skip
        assert setup.producer.cancel(waiting_id) == "accepted"  # b holds it, unsent
        cancelled = finals(drain(setup.redis, waiting_to, timeout=30))
        running = [j["status"] for j in _jobs(emulator, endpoint)]
        setup.producer.cancel(long_id)
        drain(setup.redis, long_to, timeout=30)
        per_request = jobs_by_marker(emulator, endpoint, "m")
    finally:
        stop_processes([a, b])
        cleanup(setup)
        emulator.call(emulator.engine.delete_endpoint, endpoint)
    assert [(r["status"], r["reason"], r["submissions"]) for r in cancelled] == [
        ("CANCELLED", "cancelled", 0)
    ]
    assert running == ["IN_PROGRESS"]  # answered while the slot was still held
    assert per_request == {"long": 1}  # the cancelled one was never sent


def _jobs(emulator: EmulatorHandle, endpoint: str) -> list[dict[str, str]]:
    def read() -> list[dict[str, str]]:
        return [{"status": j.status} for j in emulator.engine.endpoint(endpoint).jobs.values()]

    return list(emulator.call(read))
