"""Adoption by presence (issue 12, item 4): a worker that is stopped (SIGSTOP, as a CPU
hog or a long GC pause would starve it) keeps its requests, however late its lease
renewals; a worker that is killed (SIGKILL) has them adopted and finished by a survivor.

Two workers on one ledger: ``a`` reads the JSON door's stream, ``b`` another stream (so
every request is ``a``'s) and only recovers. Counted at the emulator: the requests it
gets while ``a`` is frozen (any is ``b`` following ``a``'s jobs: an adoption), and each
request's jobs (its input names it).

A stop is held while the jobs run, not while a POST of ``/run`` waits for its answer:
a process frozen past the client's read timeout (10 s) takes that answer as lost when it
wakes and, under ``at_least_once``, sends again by itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bridgekit import Setup, cleanup, make_setup
from conftest import start_worker, stop_processes, wait_ready
from promisekit import add_endpoint, drain, finals, jobs_by_marker

from bridge.emulator.testing import EmulatorHandle, wait_until

REQUESTS = 10
STOPPED_S = 10.0  # over three times the lease (3 s): a lease alone would lose them
JOB_MS = 14_000  # every job outlasts the stop
SETTLE_S = 1.0


@dataclass
class Pair:
    setup: Setup
    endpoint: str
    a: subprocess.Popen[bytes]
    b: subprocess.Popen[bytes]


@pytest.fixture
def pair(emulator: EmulatorHandle, redis_url: str, tmp_path: Path) -> Iterator[Pair]:
    endpoint = add_endpoint(emulator, "presence")
    setup = make_setup(emulator, redis_url, tmp_path / "workers.log", endpoint_id=endpoint)
    assert setup.settings.lease_ttl_s == 3.0
    tag = uuid.uuid4().hex[:6]
    nodes = [f"{n}-{tag}@{socket.gethostname()}" for n in ("a", "b")]
    other_stream = {**setup.env, "BRIDGE_REQUESTS_STREAM": f"{setup.settings.key_prefix}:b"}
    a = start_worker(setup.env, setup.log, celery_args=("-n", nodes[0]))
    b = start_worker(other_stream, setup.log, celery_args=("-n", nodes[1]))
    try:
        for proc, node in zip((a, b), nodes, strict=True):
            wait_ready(setup.app, proc, setup.log, timeout=60, node=node)
        yield Pair(setup, endpoint, a, b)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        stop_processes([a, b])
        cleanup(setup)
        emulator.set_faults(endpoint)
        emulator.call(emulator.engine.delete_endpoint, endpoint)


def test_a_stopped_worker_keeps_its_requests(pair: Pair, emulator: EmulatorHandle) -> None:
    setup = pair.setup
    sent = [setup.producer.send("echo", {"m": f"stop-{k}", "sleep_ms": JOB_MS})
            for k in range(REQUESTS)]  # fmt: skip
    ids = [request_id for request_id, _ in sent]
    wait_until(lambda: setup.states(ids) == {b"submitted": REQUESTS}, timeout=30)
    os.kill(pair.a.pid, signal.SIGSTOP)
    try:
        # a request a sent just before the stop may still be on its way to the endpoint:
        # count from a second later (b could adopt no sooner than adopt_after_s, 3 s)
        time.sleep(SETTLE_S)
        before = endpoint_requests(emulator, pair.endpoint)
        time.sleep(STOPPED_S - SETTLE_S)  # b looks for orphans every 0.5 s meanwhile
        during = endpoint_requests(emulator, pair.endpoint) - before
    finally:
        os.kill(pair.a.pid, signal.SIGCONT)
    replies = [finals(drain(setup.redis, reply_to, timeout=60)) for _, reply_to in sent]
    per_request = jobs_by_marker(emulator, pair.endpoint, "m")
    print(f"\nSIGSTOP {STOPPED_S:g} s: endpoint requests while stopped {dict(during)}")
    # a is frozen: any request about its jobs while it is stopped is b's, an adoption
    assert +during == Counter(), during
    assert [[r["status"] for r in rs] for rs in replies] == [["COMPLETED"]] * REQUESTS
    assert sorted(per_request.values()) == [1] * REQUESTS
    assert emulator.stats(pair.endpoint)["submissions"] == REQUESTS


def endpoint_requests(emulator: EmulatorHandle, endpoint: str) -> Counter[str]:
    """The endpoint's own count of requests, by operation."""
    return Counter(emulator.stats(endpoint)["requests"])


def test_a_killed_worker_is_adopted_and_its_requests_finished(
    pair: Pair, emulator: EmulatorHandle
) -> None:
    setup = pair.setup
    sent = [setup.producer.send("echo", {"m": f"kill-{k}", "sleep_ms": 4000})
            for k in range(REQUESTS)]  # fmt: skip
    ids = [request_id for request_id, _ in sent]
    wait_until(lambda: setup.states(ids) == {b"submitted": REQUESTS}, timeout=30)
    os.kill(pair.a.pid, signal.SIGKILL)
    pair.a.wait(timeout=10)
    killed_at = time.monotonic()
    replies = [finals(drain(setup.redis, reply_to, timeout=60)) for _, reply_to in sent]
    print(f"\nSIGKILL: all answered {time.monotonic() - killed_at:.1f} s after the kill")
    assert [[r["status"] for r in rs] for rs in replies] == [["COMPLETED"]] * REQUESTS
    assert sorted(jobs_by_marker(emulator, pair.endpoint, "m").values()) == [1] * REQUESTS
