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
import time

from _bridge import Deployment, echo_worker, send_burst
from _common import cpu_split, drain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="150,600", help="JSON-door rates, requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each rate")
    parser.add_argument("--celery-rate", type=float, default=100.0,
                        help="the Celery door's rate (0: skip)")  # fmt: skip
    args = parser.parse_args()
    rows = []
    with echo_worker("bench-steady") as (bridge, worker, _):
        send_burst(bridge, "json", 200)  # warm up: connections, the endpoint's workers
        for rate in [float(r) for r in args.rates.split(",") if r.strip()]:
            rows.append(("json", rate, *measure(bridge, worker.pid, "json", rate, args.seconds)))
        if args.celery_rate > 0:
            rows.append(("celery", args.celery_rate, *measure(
                bridge, worker.pid, "celery", args.celery_rate, args.seconds)))  # fmt: skip
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
    """``n`` JSON-door requests, evenly spaced at ``rate`` per second."""
    start = time.perf_counter()
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
