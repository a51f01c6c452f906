"""A fleet (issue 11, item 5): three live workers share the request stream and the Celery
queue while requests keep coming; each gets SIGTERM in turn and is restarted (a rolling
restart), then one gets SIGKILL while requests are still being sent, and is not
restarted (the survivors adopt its requests).

Two routes on two endpoints: ``alo`` (at_least_once) and ``amo`` (at_most_once). Counted
at the emulator, per request (each job's input names its request): every request is
answered exactly once; ``amo`` never has two jobs for one request; every job is counted
in its request's reply (``submissions``), so the extra jobs equal the sum of the replies'
``submissions`` minus the requests, less the POSTs a stopped worker had counted but not
sent (only in a reply that shows the ambiguity; printed). A SIGTERM that lands on POSTs
under way is tested on its own in test_graceful_stop.py.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bridgekit import Setup, cleanup
from celery.result import AsyncResult
from conftest import assert_no_late_replies, start_worker, stop_processes, wait_ready
from promisekit import add_endpoint, drain, finals, jobs_by_marker, routes_setup

from bridge.emulator.testing import EmulatorHandle, wait_until
from bridge.errors import JobFailed

JSON_REQUESTS = {"alo": 640, "amo": 320}
CELERY_REQUESTS = {"alo": 44, "amo": 22}
TOTAL = sum(JSON_REQUESTS.values()) + sum(CELERY_REQUESTS.values())
# The producer may pass each mark only once the event before it is over, so every event
# happens while requests are still being sent, however fast or slow the machine is.
TERM_AT = (150, 350, 550)  # a rolling restart: SIGTERM, wait for the exit, start again
KILL_AT = 700  # SIGKILL, no restart
LATENCY_MS = 20  # every endpoint request answered after 20 ms: a few POSTs always under way
PACE_S = 0.004  # between two requests: ~250 a second, a steady stream, not one burst
SETTINGS = {
    "stale_entry_s": "5",  # JSON-door entries a killed worker had read: re-read after 5 s
    "visibility_timeout_s": "15",  # Celery tasks it had reserved: redelivered after 15 s
}


@dataclass
class Sent:
    route: str
    door: str
    marker: str
    reply_to: str
    job_input: dict[str, Any]
    result: AsyncResult | None = None


@dataclass
class Producer:
    """Sends the plan in order, pausing at each mark until the event before it is done."""

    setup: Setup
    plan: list[tuple[str, str]]
    marks: list[int]
    sent: list[Sent] = field(default_factory=list)
    passed: list[threading.Event] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.passed = [threading.Event() for _ in self.marks]

    def run(self) -> None:
        rng = random.Random(5)
        try:
            for index, (route, door) in enumerate(self.plan):
                if index in self.marks:
                    gate = self.passed[self.marks.index(index)]
                    if not gate.wait(timeout=120):
                        raise AssertionError(f"event before request {index} never finished")
                marker = f"{route}/{door}/{index}/{uuid.uuid4().hex[:6]}"
                job_input = {"m": marker, "sleep_ms": rng.randint(200, 2500)}
                self.sent.append(self._send(route, door, marker, job_input))
                time.sleep(PACE_S)  # the producer's pace (load shape), not a wait for anything
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _send(self, route: str, door: str, marker: str, job_input: dict[str, Any]) -> Sent:
        if door == "json":
            _, reply_to = self.setup.producer.send(route, job_input)
            return Sent(route, door, marker, reply_to, job_input)
        reply_to = self.setup.producer.keys.reply(f"celery-{uuid.uuid4()}")
        result = self.setup.app.send_task(
            "bridge.run", kwargs={"route": route, "input": job_input, "reply_to": reply_to}
        )
        return Sent(route, door, marker, reply_to, job_input, result)


def _plan() -> list[tuple[str, str]]:
    items = [(route, "json") for route, n in JSON_REQUESTS.items() for _ in range(n)]
    items += [(route, "celery") for route, n in CELERY_REQUESTS.items() for _ in range(n)]
    random.Random(3).shuffle(items)
    return items


class Fleet:
    def __init__(self, setup: Setup, size: int) -> None:
        self.setup = setup
        self.tag = uuid.uuid4().hex[:6]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.all: list[subprocess.Popen[bytes]] = []
        for slot in range(size):
            self.procs.append(self._start(slot))
        for slot in range(size):
            self._ready(slot)

    def node(self, slot: int) -> str:
        return f"fleet{slot}-{self.tag}@{socket.gethostname()}"

    def _start(self, slot: int) -> subprocess.Popen[bytes]:
        proc = start_worker(self.setup.env, self.setup.log, celery_args=("-n", self.node(slot)))
        self.all.append(proc)
        return proc

    def _ready(self, slot: int) -> None:
        wait_ready(self.setup.app, self.procs[slot], self.setup.log, timeout=60,
                   node=self.node(slot))  # fmt: skip

    def restart(self, slot: int) -> int:
        """SIGTERM, wait for the worker to exit, start a new one; the old exit code."""
        old = self.procs[slot]
        old.terminate()
        code = old.wait(timeout=60)
        self.procs[slot] = self._start(slot)
        self._ready(slot)
        return code

    def kill(self, slot: int) -> None:
        self.procs[slot].send_signal(signal.SIGKILL)
        self.procs[slot].wait(timeout=10)


@pytest.fixture
def fleet_setup(
    emulator: EmulatorHandle, redis_url: str, tmp_path: Path
) -> Iterator[tuple[Setup, dict[str, str]]]:
    """The fleet's settings, and its routes' endpoints (route name -> endpoint id)."""
    endpoints = {"alo": add_endpoint(emulator, "fleet-alo"),
                 "amo": add_endpoint(emulator, "fleet-amo")}  # fmt: skip
    setup = routes_setup(
        emulator, redis_url, tmp_path / "fleet.log",
        {route: {"endpoint_id": endpoint_id, "delivery": "at_least_once" if route == "alo"
                 else "at_most_once"} for route, endpoint_id in endpoints.items()},
        SETTINGS,
    )  # fmt: skip
    yield setup, endpoints
    cleanup(setup)


def test_rolling_restart_and_a_kill_during_a_stream_of_requests(
    fleet_setup: tuple[Setup, dict[str, str]], emulator: EmulatorHandle
) -> None:
    setup, endpoints = fleet_setup
    for endpoint_id in endpoints.values():  # POSTs take a while: stops land mid-submit
        emulator.set_faults(endpoint_id, latency_ms=LATENCY_MS)
    fleet = Fleet(setup, 3)
    producer = Producer(setup, _plan(), [*TERM_AT[1:], KILL_AT, TOTAL])
    thread = threading.Thread(target=producer.run, name="producer", daemon=True)
    exits: list[int] = []
    try:
        thread.start()
        for slot, mark in enumerate(TERM_AT):
            wait_until(lambda m=mark: len(producer.sent) >= m or producer.error is not None,
                       timeout=120)  # fmt: skip
            exits.append(fleet.restart(slot))
            producer.passed[slot].set()
        wait_until(lambda: len(producer.sent) >= KILL_AT or producer.error is not None,
                   timeout=120)  # fmt: skip
        fleet.kill(1)
        killed_while_sending = len(producer.sent)
        producer.passed[3].set()
        thread.join(timeout=120)
        assert producer.error is None, f"producer failed: {producer.error!r}"
        assert len(producer.sent) == TOTAL
        replies = {s.marker: drain(setup.redis, s.reply_to, timeout=120) for s in producer.sent}
        outputs: dict[str, Any] = {}
        for s in producer.sent:
            if s.result is not None:
                try:
                    outputs[s.marker] = s.result.get(timeout=60)
                except JobFailed as exc:
                    outputs[s.marker] = exc
        assert_no_late_replies(setup.redis, setup.settings, [s.reply_to for s in producer.sent])
        alive = [p.poll() is None for p in fleet.procs]
    finally:
        stop_processes(fleet.all)
    per_job = {route: jobs_by_marker(emulator, eid, "m") for route, eid in endpoints.items()}
    stats = {route: emulator.stats(eid) for route, eid in endpoints.items()}

    assert exits == [0, 0, 0], f"a SIGTERMed worker did not stop cleanly: {exits}"
    assert alive == [True, False, True]
    assert killed_while_sending < TOTAL, "the kill came after the last request was sent"
    # every request answered exactly once
    counts = Counter(len(finals(r)) for r in replies.values())
    assert counts == {1: TOTAL}, f"final replies per request: {dict(counts)}"
    final = {marker: finals(r)[0] for marker, r in replies.items()}
    by_route: dict[str, list[Sent]] = {"alo": [], "amo": []}
    for s in producer.sent:
        by_route[s.route].append(s)
    endings = {route: Counter((final[s.marker]["status"], final[s.marker].get("reason"))
                              for s in sent) for route, sent in by_route.items()}  # fmt: skip
    claimed = {route: sum(final[s.marker]["submissions"] for s in sent)
               for route, sent in by_route.items()}  # fmt: skip
    summary = (f"\nfleet: {TOTAL} requests, kill after {killed_while_sending} sent; endings "
               f"{ {r: dict(e) for r, e in endings.items()} }; endpoint submissions "
               f"{ {r: s['submissions'] for r, s in stats.items()} }, replies' submissions "
               f"{claimed}")  # fmt: skip
    print(summary)
    assert endings["alo"] == {("COMPLETED", None): len(by_route["alo"])}, summary
    assert set(endings["amo"]) <= {("COMPLETED", None), ("FAILED", "ambiguous_submit")}, summary
    for s in producer.sent:  # the output came back to the door that asked
        reply = final[s.marker]
        if reply["status"] == "COMPLETED":
            assert reply["output"] == s.job_input
            if s.result is not None:
                assert outputs[s.marker] == s.job_input
        elif s.result is not None:
            assert isinstance(outputs[s.marker], JobFailed)
    # extra submissions only where the policy allows them, and owned up to by the replies
    twice_amo = {m: n for m, n in per_job["amo"].items() if n > 1}
    assert not twice_amo, f"at_most_once sent a request twice: {twice_amo}"
    # A reply's ``submissions`` counts POSTs started (counted before each is sent): one a
    # worker was stopped in the middle of may not have reached the endpoint. Only a
    # request whose reply shows that ambiguity (sent again, or ambiguous_submit) may
    # claim one job more than the endpoint holds; every other claim is exact.
    unsent = []
    for s in producer.sent:
        reply = final[s.marker]
        jobs, says = per_job[s.route][s.marker], reply["submissions"]
        if reply["status"] == "COMPLETED":
            assert jobs >= 1, f"{s.marker}: completed without a job at the endpoint"
        ambiguous = says > 1 or reply.get("reason") == "ambiguous_submit"
        if ambiguous and jobs == says - 1:
            unsent.append(s.marker)
            continue
        assert jobs == says, f"{s.marker}: the endpoint has {jobs} job(s), its reply says {says}"
    print(f"claimed but never reached the endpoint (a stop mid-POST): {len(unsent)}")
    for route, sent in by_route.items():
        extra = stats[route]["submissions"] - len(sent)
        not_sent = sum(1 for m in unsent if m.startswith(f"{route}/"))
        assert extra == claimed[route] - len(sent) - not_sent, summary
