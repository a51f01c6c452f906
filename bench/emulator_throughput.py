"""Emulator /status throughput from one client process, next to a bare aiohttp baseline.

Both servers run as subprocesses on loopback; one client process (aiohttp, keep-alive,
``--concurrency`` requests in flight) sends ``--requests`` GETs to each, ``--rounds`` rounds,
alternating, and reports the median requests/s of each and their ratio.
Rate limits are off in the emulator for this run (RunPod's 2000 per 10 s would cap it).
Not a product target: it shows that the emulator is not what limits the other benchmarks.

Run: ``.venv/bin/python bench/emulator_throughput.py`` (about 30 s; ``--quick``: 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from _common import KEY, Emulator, free_port, process, wait_listening
from _report import Report, per_s, run, times

TARGET_RPS = 2000
BASELINE_SERVER = """
import sys
from aiohttp import web
body = {"delayTime": 1, "executionTime": 1, "id": "x", "output": {"a": 1}, "status": "COMPLETED"}
async def status(request):
    if request.headers.get("Authorization") != "Bearer bench-key":
        return web.json_response({"error": "no"}, status=401)
    return web.json_response(body)
app = web.Application()
app.router.add_get("/v2/{ep}/status/{job}", status)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def hammer(url: str, requests: int, concurrency: int) -> float:
    """Send ``requests`` GETs with ``concurrency`` in flight; return requests/s."""
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status} from {url}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)


def measure(report: Report) -> None:
    args = report.args
    if args.quick:
        args.requests, args.rounds = 3000, 2
    base_port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp,
        Emulator(Path(tmp), rate_limits=False).running() as emulator,
        process([sys.executable, "-c", BASELINE_SERVER, str(base_port)], dict(os.environ),
                Path(tmp) / "baseline.log"),
    ):  # fmt: skip
        wait_listening(base_port)
        job = httpx.post(
            f"{emulator.base_url}/echo/runsync",
            json={"input": {"a": 1}},
            headers={"Authorization": f"Bearer {KEY}"},
        ).json()
        emu_url = f"{emulator.base_url}/echo/status/{job['id']}"
        base_url = f"http://127.0.0.1:{base_port}/v2/echo/status/{job['id']}"
        asyncio.run(hammer(emu_url, 500, args.concurrency))  # warm up both
        asyncio.run(hammer(base_url, 500, args.concurrency))
        emu_rates, base_rates = [], []
        for _ in range(args.rounds):
            emu_rates.append(asyncio.run(hammer(emu_url, args.requests, args.concurrency)))
            base_rates.append(asyncio.run(hammer(base_url, args.requests, args.concurrency)))
    emu, base = statistics.median(emu_rates), statistics.median(base_rates)
    report.figures.update(
        requests_per_round=args.requests,
        concurrency=args.concurrency,
        emulator_status_rps_median=round(emu),
        baseline_aiohttp_rps_median=round(base),
        rounds={"emulator": [round(r) for r in emu_rates],
                "baseline": [round(r) for r in base_rates]},
    )  # fmt: skip
    report.target(
        f"emulator /status ≥ {TARGET_RPS:,}/s from one client (not the limit of the others)",
        per_s(emu),
        emu >= TARGET_RPS,
        baseline=f"bare aiohttp {per_s(base)}",
        ratio=times(emu / base),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    run("emulator_throughput", parser, measure)


if __name__ == "__main__":
    main()
