"""Bridge end to end: one bridge worker through both doors, next to a raw Celery no-op.

Everything runs as subprocesses on loopback: a private Redis (or ``--redis-url``), the
emulator (rate limits off), one bridge worker (``python -m bridge worker --concurrency
4``, threads pool, INFO logs; the route's budgets raised so that they never bind) and,
as the baseline, a Celery worker with the bridge's Celery settings serving a no-op task.

1. Latency at light load, one request at a time, of 50 ms jobs (``echo`` with
   ``sleep_ms: 50``), enqueue → final reply: JSON door (``XADD`` → ``BLPOP``), Celery door
   (``send_task("bridge.run")`` → ``get()``), next to the job itself (the emulator's
   ``executionTime``) and a Celery no-op round trip.
2. Throughput of bursts of 0 ms jobs (``echo`` with ``{}``), first send → last reply,
   through both doors next to bursts of no-op round trips; per request: the worker's CPU
   time, Redis' CPU time and commands (``INFO commandstats``), the emulator's CPU time and
   the HTTP requests it answered.

Rounds rotate the order of the three kinds; each figure is the median over rounds, each
ratio the median of the rounds' ratios (the machine is shared and noisy).

Run: ``.venv/bin/python bench/bridge_e2e.py`` (about 3 min; ``--quick``: about 40 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _bridge import Deployment, noop_worker, raised_budgets
from _common import (
    Emulator,
    RedisSnapshot,
    cpu_seconds,
    drain,
    host_cpu,
    median,
    per_request,
    percentile,
    redis_server,
)
from _report import Report, ms, per_s, run, times
from celery import Celery

JOB_MS = 50
KINDS = ["json_door", "celery_door", "celery_noop"]
UNSCALED = {"requests_per_s", "other_processes_cores"}  # the other figures are per request
TARGETS = {  # issue 12 (where it is stricter than DESIGN.md §5, it wins)
    "json_door": {"over_job_ms": 5.0, "rps_ratio": 2.0, "cpu_ms": 0.7, "redis_ms": 0.1},
    "celery_door": {"over_job_ms": 6.0, "rps_ratio": 0.9, "cpu_ms": 2.0, "redis_ms": 0.25},
}
ISSUE_NOOP_CPU_MS = 1.60
"""The Celery no-op's worker CPU per request in the run issue 12's CPU targets were set
against (3406d9c): the issue asks for ratios to a same-run baseline, so each CPU target
is also judged as that ratio (0.7 ms: 0.44x; 2 ms: 1.25x), which a slower or busier
machine does not move."""


class Kinds:
    """Sends one request (latency) or a burst (throughput) of each kind, and checks that
    every one of them completed."""

    def __init__(self, bridge: Deployment, noop: Celery, noop_queue: str) -> None:
        self.bridge, self.noop, self.noop_queue = bridge, noop, noop_queue
        self.redis = bridge.redis
        self.task_ids: list[str] = []
        self.job_ms: list[int] = []
        self.errors: list[str] = []

    def send(self, kind: str, job_input: dict[str, Any]) -> Any:
        if kind == "celery_noop":
            result = self.noop.send_task("bench.noop", queue=self.noop_queue)
        else:
            kwargs = {"route": "echo", "input": job_input}
            result = self.bridge.celery().send_task("bridge.run", kwargs=kwargs)
        self.task_ids.append(result.id)
        return result

    def one(self, kind: str) -> float:
        """Milliseconds from enqueue to final reply of one 50 ms job."""
        job = {"sleep_ms": JOB_MS}
        start = time.perf_counter()
        if kind == "json_door":
            self.bridge.send_json([self.bridge.envelope(job)[1]])
            self._replies(1, 30)
        else:
            self._check_task(self.send(kind, job), 30)
        return (time.perf_counter() - start) * 1000

    def burst(self, kind: str, n: int) -> float:
        """Send ``n`` 0 ms requests at once; seconds from first send to last reply."""
        if kind == "json_door":
            entries = [self.bridge.envelope({})[1] for _ in range(n)]
            start = time.perf_counter()
            self.bridge.send_json(entries)
            self._replies(n, 60 + n / 20)
            return time.perf_counter() - start
        start = time.perf_counter()
        results = [self.send(kind, {}) for _ in range(n)]
        for result in results:
            self._check_task(result, 60 + n / 20)
        return time.perf_counter() - start

    def _check_task(self, result: Any, timeout: float) -> None:
        result.get(timeout=timeout, propagate=False)
        if not result.successful():
            self.errors.append(f"{result.id}: {result.state}")

    def _replies(self, n: int, timeout: float) -> None:
        def seen(raw: bytes, _: float) -> bool:
            reply = json.loads(raw)
            if reply.get("status") != "COMPLETED":
                self.errors.append(f"{reply.get('id')}: {reply.get('status')}")
            elif "execution_ms" in reply.get("timings", {}):
                self.job_ms.append(reply["timings"]["execution_ms"])
            return reply.get("type") == "result"

        if drain(self.redis, self.bridge.replies, n, time.monotonic() + timeout, seen) < n:
            raise RuntimeError(f"fewer than {n} replies within {timeout:g} s")


def summed(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for name, calls in one.items():
            total[name] = total.get(name, 0) + calls
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def rotated(index: int) -> list[str]:
    return KINDS[index % 3 :] + KINDS[: index % 3]


def measure_latency(kinds: Kinds, rounds: int, singles: int) -> dict[str, Any]:
    for kind in KINDS:  # warm up: connections, the emulator's workers, imports
        for _ in range(5):
            kinds.one(kind)
    kinds.job_ms.clear()
    samples: dict[str, list[list[float]]] = {k: [] for k in KINDS}
    for index in range(rounds):
        for kind in rotated(index):
            samples[kind].append([kinds.one(kind) for _ in range(singles)])
    figures: dict[str, Any] = {}
    for kind, per_round in samples.items():
        pooled = [x for r in per_round for x in r]
        figures[kind] = {
            "p50_ms": round(median([percentile(r, 0.5) for r in per_round]), 1),
            "p99_ms": round(percentile(pooled, 0.99), 1),
            "round_p50s_ms": [round(percentile(r, 0.5), 1) for r in per_round],
        }
    figures["job_execution_ms_p50"] = statistics.median(kinds.job_ms) if kinds.job_ms else None
    return figures


def measure_throughput(
    kinds: Kinds, pids: dict[str, int], emulator: Emulator, rounds: int, n: int
) -> dict[str, Any]:
    """Bursts of ``n``; ``pids``: ``worker``, ``noop_worker``, ``emulator``."""
    for kind in KINDS:  # warm up: scale the emulator's workers up, open connections
        kinds.burst(kind, max(50, n // 4))
    series: dict[str, dict[str, list[float]]] = {k: {} for k in KINDS}
    commands: dict[str, list[dict[str, int]]] = {k: [] for k in KINDS}
    for index in range(rounds):
        for kind in rotated(index):
            worker = pids["noop_worker" if kind == "celery_noop" else "worker"]
            cpu0, emu0 = cpu_seconds(worker), cpu_seconds(pids["emulator"])
            client0, http0 = time.process_time(), emulator.requests("echo")
            ours0, host0 = sum(cpu_seconds(p) for p in pids.values()), host_cpu()[0]
            redis0 = RedisSnapshot.take(kinds.redis)
            elapsed = kinds.burst(kind, n)
            redis1 = RedisSnapshot.take(kinds.redis)
            ours = sum(cpu_seconds(p) for p in pids.values()) - ours0
            ours += redis1.cpu_s - redis0.cpu_s + time.process_time() - client0
            ran = redis1.commands_since(redis0)
            figures = {
                # The machine is shared: CPU that none of this run's processes used.
                "other_processes_cores": (host_cpu()[0] - host0 - ours) / elapsed,
                "requests_per_s": n / elapsed,
                "worker_cpu_ms": (cpu_seconds(worker) - cpu0) * 1000 / n,
                "emulator_cpu_ms": (cpu_seconds(pids["emulator"]) - emu0) * 1000 / n,
                "redis_cpu_ms": (redis1.cpu_s - redis0.cpu_s) * 1000 / n,
                "client_cpu_ms": (time.process_time() - client0) * 1000 / n,
                "endpoint_requests": (emulator.requests("echo") - http0) / n,
                "redis_commands": sum(ran.values()) / n,
            }
            for name, value in figures.items():
                series[kind].setdefault(name, []).append(value)
            commands[kind].append(ran)
    noop = series["celery_noop"]["requests_per_s"]
    result: dict[str, Any] = {"burst": n, "rounds": rounds}
    for kind in KINDS:
        rates = series[kind]["requests_per_s"]
        result[kind] = {
            **{
                name if name in UNSCALED else f"{name}_per_request": round(median(v), 3)
                for name, v in series[kind].items()
            },
            "ratio_to_noop": round(median([r / b for r, b in zip(rates, noop, strict=True)]), 3),
            "redis_commands_by_name_per_request": per_request(
                summed(commands[kind]), n * len(commands[kind])
            ),
            "round_requests_per_s": [round(r) for r in rates],
            "round_worker_cpu_ms": [round(c, 3) for c in series[kind]["worker_cpu_ms"]],
        }
    return result


def measure(report: Report) -> None:
    args = report.args
    rounds, singles, burst = (2, 10, 200) if args.quick else (args.rounds, args.singles, args.n)
    tag = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    with (
        tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp,
        redis_server(args.redis_url) as redis_url,
        Emulator(args.logs or Path(tmp), rate_limits=False).running() as emulator,
    ):
        logs = args.logs or Path(tmp)
        bridge = Deployment(redis_url, tag, emulator.url, {"echo": {"budgets": raised_budgets()}})
        kinds = None
        try:
            with (
                bridge.worker("a", logs, args.loglevel) as (worker, _),
                noop_worker(redis_url, tag, logs, args.loglevel) as (noop, queue, noop_proc),
            ):
                kinds = Kinds(bridge, noop, queue)
                latency = measure_latency(kinds, rounds, singles)
                pids = {
                    "worker": worker.pid,
                    "noop_worker": noop_proc.pid,
                    "emulator": emulator.pid,
                }
                throughput = measure_throughput(kinds, pids, emulator, rounds, burst)
        finally:
            if args.redis_url and kinds is not None:  # a shared Redis: leave nothing behind
                bridge.cleanup(kinds.task_ids, [tag, f"{tag}-noop"])
            bridge.close()
    report.figures.update(latency=latency, throughput=throughput, errors=kinds.errors[:20])
    judge(report, latency, throughput, len(kinds.errors))


def judge(report: Report, latency: dict[str, Any], throughput: dict[str, Any], errors: int) -> None:
    job = latency["job_execution_ms_p50"] or JOB_MS
    noop = throughput["celery_noop"]
    for kind, door in (("json_door", "JSON door"), ("celery_door", "Celery door")):
        goal, lat, thr = TARGETS[kind], latency[kind], throughput[kind]
        report.target(
            f"{door}: 50 ms job, p50 ≤ job + {goal['over_job_ms']:g} ms",
            f"{ms(lat['p50_ms'])} (p99 {ms(lat['p99_ms'])})",
            lat["p50_ms"] <= job + goal["over_job_ms"],
            baseline=f"job {ms(job)}; no-op {ms(latency['celery_noop']['p50_ms'])}",
            ratio=f"job + {lat['p50_ms'] - job:.1f} ms",
        )
        report.target(
            f"{door}: throughput ≥ {goal['rps_ratio']:g}x Celery no-op round trip",
            per_s(thr["requests_per_s"]),
            thr["ratio_to_noop"] >= goal["rps_ratio"],
            baseline=f"no-op {per_s(noop['requests_per_s'])}",
            ratio=times(thr["ratio_to_noop"]),
        )
        report.target(
            f"{door}: worker CPU ≤ {goal['cpu_ms']:g} ms per request",
            ms(thr["worker_cpu_ms_per_request"]),
            thr["worker_cpu_ms_per_request"] <= goal["cpu_ms"],
            baseline=f"no-op worker {ms(noop['worker_cpu_ms_per_request'])}",
            ratio=times(thr["worker_cpu_ms_per_request"] / noop["worker_cpu_ms_per_request"]),
        )
        cpu_ratio = goal["cpu_ms"] / ISSUE_NOOP_CPU_MS
        report.target(
            f"{door}: worker CPU ≤ {cpu_ratio:.2f}x the no-op's (the {goal['cpu_ms']:g} ms "
            f"target over the issue's no-op, {ISSUE_NOOP_CPU_MS:.2f} ms)",
            times(thr["worker_cpu_ms_per_request"] / noop["worker_cpu_ms_per_request"]),
            thr["worker_cpu_ms_per_request"] <= cpu_ratio * noop["worker_cpu_ms_per_request"],
            baseline=f"no-op worker {ms(noop['worker_cpu_ms_per_request'])}",
        )
        report.target(
            f"{door}: Redis CPU ≤ {goal['redis_ms']:g} ms per request",
            f"{ms(thr['redis_cpu_ms_per_request'])}; {thr['redis_commands_per_request']:.1f} "
            f"commands, {thr['endpoint_requests_per_request']:.1f} endpoint HTTP requests",
            thr["redis_cpu_ms_per_request"] <= goal["redis_ms"],
            baseline=f"no-op {ms(noop['redis_cpu_ms_per_request'])}; "
            f"{noop['redis_commands_per_request']:.1f} commands",
            ratio=times(thr["redis_cpu_ms_per_request"] / noop["redis_cpu_ms_per_request"]),
        )
    report.target("every request of the run COMPLETED", f"{errors} did not", errors == 0)
    others = {k: throughput[k]["other_processes_cores"] for k in KINDS}
    report.info(
        "CPU used by other processes on the machine during the bursts, in cores (noise)",
        ", ".join(f"{kind} {cores:.2f}" for kind, cores in others.items()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None, help="[default: a private redis-server]")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=40, help="latency: requests per round")
    parser.add_argument("-n", type=int, default=1000, help="throughput: burst size")
    parser.add_argument("--loglevel", default="INFO", help="the workers' log level")
    parser.add_argument("--logs", type=Path, default=None, help="keep the logs in this folder")
    run("bridge_e2e", parser, measure)


if __name__ == "__main__":
    main()
