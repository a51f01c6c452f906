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
from promisekit import add_endpoint, jobs_by_marker

from bridge.emulator.testing import EmulatorHandle

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
