"""What a request costs the worker when requests come at a steady rate, not in bursts.

Not a benchmark with targets: a tool that shows how much of a request's cost batching
saves. It starts what ``bridge_e2e`` starts (a private Redis, the emulator without rate
limits, one ``bridge worker --concurrency 4``), sends JSON-door requests at each
``--rates`` (requests per second, evenly spaced) for ``--seconds`` each, and prints the
worker's CPU per request (user and system, from ``/proc``). At a low rate each request
is alone on the worker's event loop: its Redis round trips and loop turns are its own,
where a burst's requests share them. Every Celery-door request is alone in this sense
(Celery hands tasks over one at a time), which is why its rate is also measured.

Run: ``.venv/bin/python bench/steady_rate.py --rates 150,600 --seconds 10``
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from _bridge import Deployment, raised_budgets
from _common import CLOCK_TICKS, Emulator, drain, redis_server


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="150,600", help="JSON-door rates, requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each rate")
    parser.add_argument("--celery-rate", type=float, default=100.0,
                        help="the Celery door's rate (0: skip)")  # fmt: skip
    args = parser.parse_args()
    tag = f"bench-steady-{uuid.uuid4().hex[:8]}"
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-steady-") as tmp,
        redis_server(None) as redis_url,
        Emulator(Path(tmp), rate_limits=False).running() as emulator,
    ):
        bridge = Deployment(redis_url, tag, emulator.url, {"echo": {"budgets": raised_budgets()}})
        with bridge.worker("a", Path(tmp), "WARNING") as (worker, _):
            send_json(bridge, 200, 0.0)  # warm up: connections, the endpoint's workers
            for rate in [float(r) for r in args.rates.split(",") if r.strip()]:
                rows.append(("json", rate, *measure(bridge, worker.pid, "json", rate,
                                                    args.seconds)))  # fmt: skip
            if args.celery_rate > 0:
                rows.append(("celery", args.celery_rate, *measure(
                    bridge, worker.pid, "celery", args.celery_rate, args.seconds)))  # fmt: skip
        bridge.close()
    print("| door | rate (requests/s) | achieved | worker CPU per request | user | system |")
    print("|---|---|---|---|---|---|")
    for door, rate, achieved, user, system in rows:
        print(f"| {door} | {rate:g} | {achieved:.0f}/s | {user + system:.2f} ms | {user:.2f} ms "
              f"| {system:.2f} ms |")  # fmt: skip


def measure(
    bridge: Deployment, pid: int, door: str, rate: float, seconds: float
) -> tuple[float, float, float]:
    """Send ``rate`` requests/s for ``seconds``, wait for their replies: (achieved rate,
    user ms and system ms of worker CPU per request)."""
    n = max(1, int(rate * seconds))
    user0, system0 = cpu_split(pid)
    start = time.perf_counter()
    if door == "json":
        send_json(bridge, n, rate)
    else:
        send_celery(bridge, n, rate)
    elapsed = time.perf_counter() - start
    user1, system1 = cpu_split(pid)
    return n / elapsed, (user1 - user0) * 1000 / n, (system1 - system0) * 1000 / n


def send_json(bridge: Deployment, n: int, rate: float) -> None:
    """``n`` JSON-door requests, evenly spaced at ``rate`` per second (0: at once)."""
    start = time.perf_counter()
    if rate <= 0:
        bridge.send_json([bridge.envelope({})[1] for _ in range(n)])
    else:
        for i in range(n):
            bridge.send_json([bridge.envelope({})[1]])
            pause = start + (i + 1) / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
    if drain(bridge.redis, bridge.replies, n, time.monotonic() + 120, lambda *_: True) < n:
        raise RuntimeError("replies missing")


def send_celery(bridge: Deployment, n: int, rate: float) -> None:
    """``n`` Celery-door requests at ``rate`` per second; waits for every result."""
    app = bridge.celery()
    start = time.perf_counter()
    results = []
    for i in range(n):
        results.append(app.send_task("bridge.run", kwargs={"route": "echo", "input": {}}))
        pause = start + (i + 1) / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    for result in results:
        result.get(timeout=120, propagate=False)


if __name__ == "__main__":
    main()
