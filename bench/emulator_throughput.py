"""Emulator /status throughput from one client process, next to a bare aiohttp baseline.

Both servers run as subprocesses on loopback; one client process (aiohttp, keep-alive,
``--concurrency`` requests in flight) sends ``--requests`` GETs to each, three rounds,
alternating, and reports the median requests/s of each and their ratio.
Rate limits are off in the emulator for this run (RunPod's 2000 per 10 s would cap it).

Run: ``.venv/bin/python bench/emulator_throughput.py`` (about 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from _common import free_port, wait_listening

KEY = "bench-key"
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


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    env = {
        **os.environ,
        "BRIDGE_EMULATOR_API_KEYS": KEY,
        "BRIDGE_EMULATOR_RATE_LIMITS_ENABLED": "false",
    }
    emu_port, base_port = free_port(), free_port()
    command = ["emulator", "--port", str(emu_port), "--log-level", "WARNING"]
    emulator = subprocess.Popen(
        [sys.executable, "-m", "bridge", *command], env=env, stdout=subprocess.DEVNULL
    )
    baseline = subprocess.Popen([sys.executable, "-c", BASELINE_SERVER, str(base_port)])
    try:
        wait_listening(emu_port)
        wait_listening(base_port)
        job = httpx.post(
            f"http://127.0.0.1:{emu_port}/v2/echo/runsync",
            json={"input": {"a": 1}},
            headers={"Authorization": f"Bearer {KEY}"},
        ).json()
        emu_url = f"http://127.0.0.1:{emu_port}/v2/echo/status/{job['id']}"
        base_url = f"http://127.0.0.1:{base_port}/v2/echo/status/{job['id']}"
        asyncio.run(hammer(emu_url, 500, args.concurrency))  # warm up both
        asyncio.run(hammer(base_url, 500, args.concurrency))
        emu_rates, base_rates = [], []
        for _ in range(args.rounds):
            emu_rates.append(asyncio.run(hammer(emu_url, args.requests, args.concurrency)))
            base_rates.append(asyncio.run(hammer(base_url, args.requests, args.concurrency)))
    finally:
        for proc in (emulator, baseline):
            proc.terminate()
            proc.wait(timeout=10)
    emu_median, base_median = statistics.median(emu_rates), statistics.median(base_rates)
    result = {
        "bench": "emulator_throughput",
        "requests_per_round": args.requests,
        "concurrency": args.concurrency,
        "emulator_status_rps_median": round(emu_median),
        "baseline_aiohttp_rps_median": round(base_median),
        "ratio_emulator_to_baseline": round(emu_median / base_median, 3),
        "target_rps": 2000,
        "meets_target": emu_median >= 2000,
        "rounds": {
            "emulator": [round(r) for r in emu_rates],
            "baseline": [round(r) for r in base_rates],
        },
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "emulator_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
