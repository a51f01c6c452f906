"""In flight: 10,000 long jobs held by one bridge worker process, each followed to its end.

A private Redis (or ``--redis-url``) and the emulator at RunPod's default rate limits
(429 past them), its ``echo`` endpoint allowed ``-n`` + 100 workers so that every job
runs at once. One bridge worker (``--concurrency 4``, threads pool) keeps the route's
default budgets and ``long_poll_below``; only ``max_in_flight`` (1,000 by default) is
raised to ``-n``.

``-n`` requests go through the JSON door at once, all replying to one list; each asks
for a job of ``job_s`` seconds (``echo`` with ``sleep_ms``, and its request id, which the
job's output echoes). RunPod's ``/run`` limit (1,000 per 10 s) makes submitting 10,000
jobs take at least 100 s, so 60 s jobs could never all be in flight together: each job
lasts the estimated submission time + 60 s, and the report says how long all of them
were in flight at once (the emulator's ``/health``: jobs in queue or in progress).

The benchmark reads every final reply as it arrives until each request has one (or a
deadline passes), then 5 s more for late duplicates, and counts at the emulator: jobs
created (``submissions``) and jobs per request id (from their outputs). It also reports
the worker's RSS (idle before; every second; peak ``VmHWM``), the 429s the emulator
answered, Redis commands and CPU per request (``INFO``), the endpoint HTTP requests per
request, and the worker's CPU time.

Run: ``.venv/bin/python bench/inflight.py`` (about 6.5 min for 10,000; ``--quick``: 300
jobs, about 40 s).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from _bridge import Deployment
from _common import Emulator, RedisSnapshot, cpu_seconds, drain, memory_mb, per_request
from _common import redis_server as private_redis
from _report import Report, run

TARGET_JOBS, TARGET_RSS_MB, TARGET_HOLD_S = 10_000, 300.0, 60.0
RUN_PER_S = 1000 / 10 * 0.6  # RunPod's /run limit, less the budget's margin (a guess, low)


class Follow:
    """What the benchmark sees while the jobs run: replies, the endpoint, the worker."""

    def __init__(self, bridge: Deployment, emulator: Emulator, pid: int, n: int) -> None:
        self.bridge, self.emulator, self.pid, self.n = bridge, emulator, pid, n
        self.replies: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.last_reply_at = 0.0
        self.peak_rss = 0.0
        self.all_in_at: float | None = None
        self.all_in_rss = 0.0
        self.first_end_at: float | None = None
        self.first_429_at: float | None = None
        self.cpu_at: dict[str, float] = {}
        self.timeline: list[dict[str, Any]] = []

    def seen(self, raw: bytes, now: float) -> bool:
        reply = json.loads(raw)
        if reply.get("type") != "result":
            return False
        self.replies[reply["id"]] += 1
        self.statuses[str(reply.get("status"))] += 1
        self.last_reply_at = now
        return self.replies[reply["id"]] == 1

    def run(self, start: float, deadline: float) -> None:
        answered, last_health = 0, 0.0
        while answered < self.n and (now := time.monotonic()) < deadline:
            window = min(now + 1, deadline)
            answered += drain(self.bridge.redis, self.bridge.replies, self.n, window, self.seen)
            rss = memory_mb(self.pid)
            self.peak_rss = max(self.peak_rss, rss)
            if time.monotonic() - last_health >= 2:
                last_health = time.monotonic()
                self.watch_endpoint(last_health, start, rss, answered)

    def watch_endpoint(self, now: float, start: float, rss: float, answered: int) -> None:
        jobs = self.emulator.health("echo")["jobs"]
        alive = jobs["inQueue"] + jobs["inProgress"]
        if self.all_in_at is None and alive >= self.n:
            self.all_in_at, self.all_in_rss = now, rss
            self.cpu_at["all_in"] = cpu_seconds(self.pid)
        elif self.all_in_at is not None and self.first_end_at is None and alive < self.n:
            self.first_end_at = now
            self.cpu_at["first_end"] = cpu_seconds(self.pid)
        stats = self.emulator.stats("echo")
        if stats["responses_429"] and self.first_429_at is None:
            self.first_429_at = now
        if not self.timeline or now - start - self.timeline[-1]["t_s"] >= 15:
            point = {"t_s": round(now - start), "alive_at_endpoint": alive}
            point |= {"answered": answered, "rss_mb": round(rss, 1)}
            point |= {"responses_429": stats["responses_429"], "requests": stats["requests"]}
            self.timeline.append(point)


def measure(report: Report) -> None:
    args = report.args
    n = 300 if args.quick else args.n
    hold_s = 10 if args.quick else TARGET_HOLD_S
    est_submit_s = n / RUN_PER_S
    job_s = args.job_s or math.ceil(est_submit_s + hold_s)
    tag = f"bench-inflight-{uuid.uuid4().hex[:8]}"
    with (
        tempfile.TemporaryDirectory(prefix="bench-inflight-") as tmp,
        private_redis(args.redis_url) as redis_url,
    ):
        logs = args.logs or Path(tmp)
        with Emulator(logs, rate_limits=True, workers=n + 100).running() as emulator:
            bridge = Deployment(redis_url, tag, emulator.url, {"echo": {"max_in_flight": n}})
            try:
                with bridge.worker("inflight", logs, args.loglevel) as (worker, _):
                    figures = hold(bridge, emulator, worker.pid, n, job_s, est_submit_s)
            finally:
                if args.redis_url:
                    bridge.cleanup([], [tag])
                bridge.close()
    report.figures.update(figures)
    judge(report, figures)


def hold(
    bridge: Deployment, emulator: Emulator, pid: int, n: int, job_s: int, est_submit_s: float
) -> dict[str, Any]:
    time.sleep(2)
    idle_rss = memory_mb(pid)
    ids = [uuid.uuid4().hex for _ in range(n)]
    job = {"sleep_ms": job_s * 1000}
    entries = [bridge.envelope({**job, "rid": i}, request_id=i)[1] for i in ids]
    follow = Follow(bridge, emulator, pid, n)
    redis0, cpu0 = RedisSnapshot.take(bridge.redis), cpu_seconds(pid)
    start = time.monotonic()
    bridge.send_json(entries)
    follow.run(start, deadline=start + 1.5 * est_submit_s + job_s + 300)
    follow.run(start, deadline=time.monotonic() + 5)  # late duplicates
    cpu = cpu_seconds(pid) - cpu0
    redis1 = RedisSnapshot.take(bridge.redis)
    stats = emulator.stats("echo")
    jobs = Counter(
        j["output"]["rid"]
        for j in emulator.jobs("echo")
        if isinstance(j.get("output"), dict) and "rid" in j["output"]
    )
    held = (
        follow.first_end_at - follow.all_in_at
        if follow.all_in_at is not None and follow.first_end_at is not None
        else None
    )
    hold_cpu = (follow.cpu_at["first_end"] - follow.cpu_at["all_in"]) / held * 100 if held else None
    http = {op: c for op, c in stats["requests"].items() if op != "health"}
    commands = redis1.commands_since(redis0)
    return {
        "jobs": n,
        "job_s": job_s,
        "seconds_to_all_in_flight": rounded(follow.all_in_at, start),
        "all_in_flight_together_s": round(held, 1) if held is not None else None,
        "seconds_to_last_reply": round(follow.last_reply_at - start, 1),
        "answered": sum(1 for i in ids if follow.replies[i]),
        "duplicate_replies": sum(c - 1 for c in follow.replies.values() if c > 1),
        "statuses": dict(follow.statuses),
        "jobs_created": stats["submissions"],
        "requests_without_a_job": sum(1 for i in ids if jobs[i] == 0),
        "requests_with_several_jobs": sum(1 for i in ids if jobs[i] > 1),
        "responses_429": stats["responses_429"],
        "seconds_to_first_429": rounded(follow.first_429_at, start),
        "idle_rss_mb": round(idle_rss, 1),
        "rss_all_in_flight_mb": round(follow.all_in_rss, 1),
        "peak_rss_mb": round(memory_mb(pid, "VmHWM"), 1),
        "worker_cpu_s": round(cpu, 1),
        "worker_cpu_ms_per_request": round(cpu * 1000 / n, 2),
        "worker_cpu_percent_while_all_in_flight": round(hold_cpu, 1) if hold_cpu else None,
        "endpoint_requests_per_request": {
            "total": round(sum(http.values()) / n, 2),
            **{op: round(c / n, 2) for op, c in http.items()},
        },
        "redis_commands_per_request": per_request(commands, n),
        "redis_cpu_ms_per_request": round((redis1.cpu_s - redis0.cpu_s) * 1000 / n, 3),
        "emulator_stats": stats,
        "timeline": follow.timeline,
    }


def rounded(at: float | None, start: float) -> float | None:
    return round(at - start, 1) if at is not None else None


def judge(report: Report, f: dict[str, Any]) -> None:
    n, small = f["jobs"], f["jobs"] < TARGET_JOBS
    held = f["all_in_flight_together_s"]
    report.target(
        f"{TARGET_JOBS:,} jobs in flight at once in one worker process, for ≥ {TARGET_HOLD_S:g} s",
        f"{n:,} at once for {held} s (after {f['seconds_to_all_in_flight']} s)"
        if held is not None
        else f"never all {n:,} at once",
        held is not None and held >= TARGET_HOLD_S,
        scaled_down=small,
    )
    report.target(
        f"worker RSS ≤ {TARGET_RSS_MB:g} MB holding them",
        f"{f['peak_rss_mb']} MB peak ({f['rss_all_in_flight_mb']} MB when all were in flight)",
        f["peak_rss_mb"] <= TARGET_RSS_MB,
        baseline=f"idle {f['idle_rss_mb']} MB",
        ratio=f"{(f['peak_rss_mb'] - f['idle_rss_mb']) * 1024 / n:.1f} KB per request",
        scaled_down=small,
    )
    first = f["seconds_to_first_429"]
    report.target(
        f"zero 429s at RunPod's default limits ({n:,} jobs)",
        f"{f['responses_429']} 429 responses" + (f" (the first after {first} s)" if first else ""),
        f["responses_429"] == 0,
    )
    lost = n - f["answered"]
    report.target(
        f"every job followed to its end: 0 lost ({n:,} jobs)",
        f"{lost} without a final reply after {f['seconds_to_last_reply']} s; "
        f"{f['requests_without_a_job']} without a job at the emulator; {f['statuses']}",
        lost == 0 and f["requests_without_a_job"] == 0,
    )
    extra = f["jobs_created"] - n
    report.target(
        f"0 duplicates ({n:,} jobs)",
        f"{f['duplicate_replies']} duplicate replies; {f['jobs_created']:,} jobs created "
        f"({f['requests_with_several_jobs']} requests with several)",
        f["duplicate_replies"] == 0 and extra == 0 and f["requests_with_several_jobs"] == 0,
    )
    http, cmds = f["endpoint_requests_per_request"], f["redis_commands_per_request"]
    report.info(
        "per request while holding them",
        f"{http['total']} endpoint HTTP requests, {cmds['total']} Redis commands, "
        f"Redis CPU {f['redis_cpu_ms_per_request']} ms, worker CPU "
        f"{f['worker_cpu_ms_per_request']} ms",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None, help="[default: a private redis-server]")
    parser.add_argument("-n", type=int, default=TARGET_JOBS, help="jobs held")
    parser.add_argument("--job-s", type=int, default=0, help="their length [default: see above]")
    parser.add_argument("--loglevel", default="INFO", help="the worker's log level")
    parser.add_argument("--logs", type=Path, default=None, help="keep the logs in this folder")
    run("inflight", parser, measure)


if __name__ == "__main__":
    main()
