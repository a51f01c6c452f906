"""Scale-out on one host: JSON-door throughput of two bridge worker processes next to one.

A private Redis (or ``--redis-url``), the emulator (rate limits off) and the route's
budgets raised, as in ``bridge_e2e.py``. Bursts of ``-n`` 0 ms jobs (``echo`` with ``{}``)
go through the JSON door (``XADD`` → final replies), alternately to one worker process
and to two (the second is started before and stopped after its bursts; rounds alternate
the order). Reported: requests/s of each, their ratio (median of the rounds' ratios) and,
to show what limits the two-worker figure, the CPU each process used during those bursts
(in cores: CPU seconds per second) next to what the whole machine had.

Run: ``.venv/bin/python bench/scale_out.py`` (about 2 min; ``--quick``: about 40 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from _bridge import Deployment, raised_budgets
from _common import (
    Emulator,
    RedisSnapshot,
    cpu_seconds,
    drain,
    host_cpu,
    median,
    redis_server,
)
from _report import Report, per_s, run, times

TARGET_RATIO = 1.7


def redis_cpu(bridge: Deployment) -> float:
    return RedisSnapshot.take(bridge.redis).cpu_s


def burst(bridge: Deployment, n: int, pids: dict[str, int]) -> dict[str, float]:
    """``n`` requests at once; requests/s and the cores each process used meanwhile."""
    entries = [bridge.envelope({})[1] for _ in range(n)]
    errors = 0

    def seen(raw: bytes, _: float) -> bool:
        nonlocal errors
        reply = json.loads(raw)
        errors += reply.get("status") != "COMPLETED"
        return reply.get("type") == "result"

    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    redis0, client0, (busy0, total0) = redis_cpu(bridge), time.process_time(), host_cpu()
    start = time.monotonic()
    bridge.send_json(entries)
    if drain(bridge.redis, bridge.replies, n, start + 60 + n / 20, seen) < n:
        raise RuntimeError(f"fewer than {n} replies in time")
    elapsed = time.monotonic() - start
    busy1, total1 = host_cpu()
    redis_cores = (redis_cpu(bridge) - redis0) / elapsed
    cores = {
        f"{name}_cores": (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()
    }
    if errors:
        raise RuntimeError(f"{errors} of {n} requests did not complete")
    return {
        "requests_per_s": n / elapsed,
        **cores,
        "redis_cores": redis_cores,
        "client_cores": (time.process_time() - client0) / elapsed,
        "machine_busy_cores": (busy1 - busy0) / elapsed,
        "machine_cores": (total1 - total0) / elapsed,
    }


def measure(report: Report) -> None:
    args = report.args
    rounds, n = (2, 300) if args.quick else (args.rounds, args.n)
    tag = f"bench-scale-{uuid.uuid4().hex[:8]}"
    series: dict[str, list[dict[str, float]]] = {"one": [], "two": []}
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp,
        redis_server(args.redis_url) as redis_url,
        Emulator(args.logs or Path(tmp), rate_limits=False).running() as emulator,
    ):
        logs = args.logs or Path(tmp)
        bridge = Deployment(redis_url, tag, emulator.url, {"echo": {"budgets": raised_budgets()}})
        try:
            with bridge.worker("1", logs, args.loglevel) as (first, _):
                second = contextlib.ExitStack()
                pids = {"emulator": emulator.pid, "worker_1": first.pid}
                burst(bridge, max(100, n // 4), pids)  # warm up: connections, emulator workers
                for index in range(rounds):
                    for config in ("one", "two") if index % 2 == 0 else ("two", "one"):
                        if config == "two" and "worker_2" not in pids:
                            proc, _ = second.enter_context(
                                bridge.worker(f"2-{index}", logs, args.loglevel)
                            )
                            pids["worker_2"] = proc.pid
                            burst(bridge, max(100, n // 4), pids)  # warm up the new one
                        elif config == "one" and "worker_2" in pids:
                            second.close()
                            del pids["worker_2"]
                        series[config].append(burst(bridge, n, pids))
                second.close()
        finally:
            if args.redis_url:
                bridge.cleanup([], [tag])
            bridge.close()
    judge(report, series, n)


def judge(report: Report, series: dict[str, list[dict[str, float]]], n: int) -> None:
    one = [r["requests_per_s"] for r in series["one"]]
    two = [r["requests_per_s"] for r in series["two"]]
    ratio = median([b / a for a, b in zip(one, two, strict=True)])
    used = {
        key: round(median([r.get(key, 0.0) for r in series["two"]]), 2)
        for key in series["two"][0]
        if key.endswith("_cores")
    }
    report.figures.update(
        burst=n,
        one_worker={"requests_per_s": round(median(one)), "rounds": [round(x) for x in one]},
        two_workers={"requests_per_s": round(median(two)), "rounds": [round(x) for x in two]},
        ratio_median_of_rounds=round(ratio, 3),
        cores_used_during_two_worker_bursts=used,
        cores_used_during_one_worker_bursts={
            key: round(median([r.get(key, 0.0) for r in series["one"]]), 2)
            for key in series["one"][0]
            if key.endswith("_cores")
        },
        machine_cores=os.cpu_count(),
    )
    report.target(
        f"two worker processes ≥ {TARGET_RATIO:g}x one (JSON door, bursts of {n:,})",
        per_s(median(two)),
        ratio >= TARGET_RATIO,
        baseline=f"one worker {per_s(median(one))}",
        ratio=times(ratio),
    )
    ours = sum(v for k, v in used.items() if not k.startswith("machine"))
    busy, cores = used.get("machine_busy_cores", 0), used.get("machine_cores", 0)
    workers = used.get("worker_1_cores", 0) + used.get("worker_2_cores", 0)
    report.info(
        "CPU during the two-worker bursts, in cores",
        f"workers {workers:.2f}, emulator {used.get('emulator_cores', 0):.2f}, "
        f"Redis {used.get('redis_cores', 0):.2f}, client {used.get('client_cores', 0):.2f}; "
        f"other processes {max(0.0, busy - ours):.2f}; machine busy {busy:.2f} of {cores:.2f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None, help="[default: a private redis-server]")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("-n", type=int, default=2000, help="burst size")
    parser.add_argument("--loglevel", default="INFO", help="the workers' log level")
    parser.add_argument("--logs", type=Path, default=None, help="keep the logs in this folder")
    run("scale_out", parser, measure)


if __name__ == "__main__":
    main()
