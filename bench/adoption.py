"""Adoption: a killed worker's requests are followed again; a starved one's are left alone.

A fleet of three bridge workers (``a``, ``b``, ``c``) on a private Redis (or
``--redis-url``) and the emulator (rate limits off, budgets raised), with the product's
default lease and recovery settings. Two routes lead to the same endpoint: ``pinned``,
whose Celery queue only ``a`` consumes, and ``echo``, served by ``b`` and ``c``. Requests
go through the Celery door with a ``reply_to`` list, so every final reply is read with
its request id, at the moment it arrives.

1. **SIGKILL.** ``-m`` requests on each route, with jobs sized to end together at T (8 s
   after sending). Once the emulator has created every job, ``a`` is killed with SIGKILL
   0.5 s before T. Its requests can only end if ``b`` or ``c`` follow them: the figure is
   the time from the kill to each of their final replies (p99; the floor is the 0.5 s
   their jobs still had to run). Baseline, same run: the ``echo`` requests, followed by
   live workers all along (reply - T).
2. **Starvation.** A new worker ``a2`` takes ``-m`` pinned requests with jobs that end
   20 s after sending; once the emulator has created them all, ``a2`` is stopped with
   SIGSTOP for 10 s (no CPU at all, the limit of what a CPU hog can do to it), then
   resumed. ``b`` and ``c`` have nothing else in flight, so any ``/status``,
   ``/status-sync`` or ``/stream`` request the emulator answers during the freeze comes
   from them following ``a2``'s requests: a false adoption.

Through both: every request answered exactly once (replies counted per request id), and
the emulator created exactly one job per request (its ``submissions`` and the request id
each job's output echoes).

Run: ``.venv/bin/python bench/adoption.py`` (about 1.5 min).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from _bridge import Deployment, raised_budgets
from _common import Emulator, drain, percentile, redis_server, wait_for
from _report import Report, run

TARGET_S = 5.0
FOLLOW_OPS = ("status", "status-sync", "stream")


class Fleet:
    """The deployment, the emulator, and every request sent with its reply times."""

    def __init__(self, bridge: Deployment, emulator: Emulator) -> None:
        self.bridge, self.emulator = bridge, emulator
        self.replies: dict[str, list[float]] = {}
        self.statuses: Counter[str] = Counter()
        self.sent: list[str] = []

    def send(self, route: str, count: int, end_at: float) -> list[str]:
        """``count`` requests on ``route`` whose jobs end at ``end_at`` (monotonic)."""
        ids = []
        app = self.bridge.celery()
        for _ in range(count):
            request_id = uuid.uuid4().hex
            sleep_ms = max(0, round((end_at - time.monotonic()) * 1000))
            kwargs = {"route": route, "input": {"sleep_ms": sleep_ms, "rid": request_id},
                      "reply_to": self.bridge.replies, "request_id": request_id}  # fmt: skip
            app.send_task("bridge.run", kwargs=kwargs)
            ids.append(request_id)
        self.sent += ids
        return ids

    def wait_created(self, timeout: float) -> None:
        """Until the emulator has created a job for every request sent so far."""
        created = lambda: self.emulator.stats("echo")["submissions"] >= len(self.sent)  # noqa: E731
        wait_for(created, timeout, "the emulator creating every job", interval=0.05)

    def collect(self, ids: list[str] | None, deadline: float) -> None:
        """Read replies until every one of ``ids`` has its final reply, or ``deadline``
        (``ids`` None: read until ``deadline``, to catch late duplicates)."""
        waiting = set(ids or []) - set(self.replies)

        def seen(raw: bytes, now: float) -> bool:
            reply = json.loads(raw)
            if reply.get("type") != "result":
                return False
            self.replies.setdefault(reply["id"], []).append(now)
            self.statuses[reply.get("status", "?")] += 1
            if reply["id"] in waiting:
                waiting.discard(reply["id"])
                return True
            return False

        want = len(waiting) if ids is not None else 1 << 30
        drain(self.bridge.redis, self.bridge.replies, want, deadline, seen)

    def follow_requests(self) -> int:
        return self.emulator.requests("echo", FOLLOW_OPS)


def kill_phase(fleet: Fleet, a: Any, m: int) -> dict[str, Any]:
    start = time.monotonic()
    end_at = start + 8
    pinned = fleet.send("pinned", m, end_at)
    echo = fleet.send("echo", m, end_at)
    fleet.wait_created(timeout=end_at - 1 - time.monotonic())
    time.sleep(max(0.0, end_at - 0.5 - time.monotonic()))
    os.kill(a.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    a.wait()
    fleet.collect(pinned + echo, killed_at + 120)
    orphans = [fleet.replies[i][0] - killed_at for i in pinned if i in fleet.replies]
    live = [fleet.replies[i][0] - end_at for i in echo if i in fleet.replies]
    return {
        "requests_per_route": m,
        "killed_after_s": round(killed_at - start, 2),
        "orphans_answered": len(orphans),
        "orphans_from_kill_s": summary(orphans),
        "live_after_job_end_s": summary(live),
        "live_answered": len(live),
    }


def freeze_phase(fleet: Fleet, a2: Any, m: int, freeze_s: float) -> dict[str, Any]:
    end_at = time.monotonic() + freeze_s + 10
    pinned = fleet.send("pinned", m, end_at)
    fleet.wait_created(timeout=8)
    os.kill(a2.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        time.sleep(0.3)  # requests a2 wrote before it stopped have been read by now
        before = fleet.follow_requests()
        time.sleep(freeze_s - 0.3)
        during = fleet.follow_requests() - before
    finally:
        os.kill(a2.pid, signal.SIGCONT)
        frozen_s = time.monotonic() - frozen_at
    fleet.collect(pinned, end_at + 60)
    return {
        "requests": m,
        "frozen_s": round(frozen_s, 1),
        "follow_requests_by_others_while_frozen": during,
        "answered": sum(1 for i in pinned if i in fleet.replies),
    }


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {
        q: round(percentile(values, v), 2) for q, v in (("p50", 0.5), ("p99", 0.99), ("max", 1))
    }


def exactly_once(fleet: Fleet) -> dict[str, Any]:
    """Replies per request id and jobs per request id, counted at the emulator."""
    fleet.collect(None, time.monotonic() + 3)  # late duplicates
    jobs = Counter(
        j["output"]["rid"]
        for j in fleet.emulator.jobs("echo")
        if isinstance(j.get("output"), dict) and "rid" in j["output"]
    )
    return {
        "requests": len(fleet.sent),
        "answered": sum(1 for i in fleet.sent if i in fleet.replies),
        "duplicate_replies": sum(len(t) - 1 for t in fleet.replies.values()),
        "statuses": dict(fleet.statuses),
        "jobs_created": fleet.emulator.stats("echo")["submissions"],
        "requests_without_a_job": sum(1 for i in fleet.sent if jobs[i] == 0),
        "requests_with_several_jobs": sum(1 for i in fleet.sent if jobs[i] > 1),
    }


def measure(report: Report) -> None:
    args = report.args
    m = 30 if args.quick else args.m
    tag = f"bench-adopt-{uuid.uuid4().hex[:8]}"
    with (
        tempfile.TemporaryDirectory(prefix="bench-adopt-") as tmp,
        redis_server(args.redis_url) as redis_url,
        # Every job runs at once (3 m of them), with no cold start: each ends when asked.
        Emulator(
            args.logs or Path(tmp), rate_limits=False, workers=3 * m + 10, cold_start_ms=0
        ).running() as emulator,
    ):
        logs = args.logs or Path(tmp)
        budgets = raised_budgets()
        routes = {"echo": {"budgets": budgets},
                  "pinned": {"budgets": budgets, "queue": f"{tag}-pinned"}}  # fmt: skip
        bridge = Deployment(redis_url, tag, emulator.url, routes)
        fleet = Fleet(bridge, emulator)
        try:
            with (
                bridge.worker("b", logs, args.loglevel, queues=tag) as _,
                bridge.worker("c", logs, args.loglevel, queues=tag) as _,
            ):
                with bridge.worker("a", logs, args.loglevel, queues=f"{tag}-pinned") as (a, _):
                    killed = kill_phase(fleet, a, m)
                with bridge.worker("a2", logs, args.loglevel, queues=f"{tag}-pinned") as (a2, _):
                    frozen = freeze_phase(fleet, a2, m, args.freeze_s)
                    once = exactly_once(fleet)
        finally:
            if args.redis_url:
                bridge.cleanup([], [tag, f"{tag}-pinned"])
            bridge.close()
    report.figures.update(sigkill=killed, starvation=frozen, exactly_once=once)
    judge(report, killed, frozen, once)


def judge(
    report: Report, killed: dict[str, Any], frozen: dict[str, Any], once: dict[str, Any]
) -> None:
    orphans, live = killed["orphans_from_kill_s"], killed["live_after_job_end_s"]
    m = killed["requests_per_route"]
    all_back = killed["orphans_answered"] == m
    p99 = orphans["p99"]
    report.target(
        f"after SIGKILL of 1 of 3 workers, its {m} requests followed again ≤ {TARGET_S:g} s "
        "(p99 from the kill)",
        f"p99 {p99} s (p50 {orphans['p50']}, max {orphans['max']}; "
        f"{killed['orphans_answered']}/{m} answered)",
        all_back and p99 is not None and p99 <= TARGET_S,
        baseline=f"live workers' requests: p99 {live['p99']} s after their job ended",
    )
    during = frozen["follow_requests_by_others_while_frozen"]
    report.target(
        f"no false adoption of a live worker's requests while it is starved "
        f"{frozen['frozen_s']:g} s (SIGSTOP)",
        f"{during} status requests by other workers during the freeze; "
        f"{frozen['answered']}/{frozen['requests']} answered",
        during == 0 and frozen["answered"] == frozen["requests"],
    )
    n = once["requests"]
    lost = n - once["answered"]
    extra_jobs = once["jobs_created"] - n
    report.target(
        "through kill and freeze: one final reply and one GPU job per request",
        f"{lost} lost, {once['duplicate_replies']} duplicate replies, {once['jobs_created']} "
        f"jobs for {n} requests ({once['requests_with_several_jobs']} with several)",
        lost == 0 and once["duplicate_replies"] == 0 and extra_jobs == 0
        and once["requests_with_several_jobs"] == 0 and once["requests_without_a_job"] == 0,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None, help="[default: a private redis-server]")
    parser.add_argument("-m", type=int, default=150, help="requests per route and phase")
    parser.add_argument("--freeze-s", type=float, default=10.0, help="how long a2 is stopped")
    parser.add_argument("--loglevel", default="INFO", help="the workers' log level")
    parser.add_argument("--logs", type=Path, default=None, help="keep the logs in this folder")
    run("adoption", parser, measure)


if __name__ == "__main__":
    main()
