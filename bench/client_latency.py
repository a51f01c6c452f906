"""Client latency: 50 ms jobs on the emulator, bridge.runpod next to the official SDK.

The emulator runs as a subprocess on loopback (built-in ``echo`` endpoint, rate limits
off so that the official SDK's once-a-second polling of 1,000 jobs is not refused). In
one process, in alternating rounds, each client submits 50 ms jobs and waits for them:

* single job, one after the other: ``AsyncioEndpoint.run`` + ``AsyncioJob.output()``
  (and the blocking ``Endpoint.run`` + ``Job.output()``), latency = submit → output;
* 1,000 jobs at once on one session (after an unmeasured burst that opens connections
  and scales the endpoint's workers up): latency p50/p99 and jobs/s.

bridge.runpod uses its own ``http_client.ClientSession()``; the official ``runpod`` 1.12 SDK
a plain ``aiohttp.ClientSession()`` (what its ``runpod.http_client.ClientSession`` is) and
``output(timeout=60)`` (its default ``timeout=0`` raises at once). Figures are medians over
rounds; the target is p50 ≤ job + 25 ms.

Run: ``.venv/bin/python bench/client_latency.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from _common import free_port, wait_listening

import bridge.runpod as ours
from bridge.runpod.http_client import ClientSession

KEY = "bench-key"
JOB_MS = 50
TARGET_MS = JOB_MS + 25


def official_sdk() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # runpod 1.12 warns at import time
        import runpod
    # It also turns on debug logging of every HTTP request: keep the report readable.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return runpod


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Submit = Callable[[], Awaitable[Any]]


async def timed(submit: Submit) -> float:
    """Milliseconds from submission to output of one job."""
    start = time.perf_counter()
    await submit()
    return (time.perf_counter() - start) * 1000


async def sequential(submit: Submit, jobs: int) -> list[float]:
    return [await timed(submit) for _ in range(jobs)]


async def concurrent(submit: Submit, jobs: int) -> tuple[list[float], float]:
    start = time.perf_counter()
    latencies = await asyncio.gather(*(timed(submit) for _ in range(jobs)))
    return list(latencies), jobs / (time.perf_counter() - start)


class Ours:
    name = "bridge.runpod"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def session(self) -> aiohttp.ClientSession:
        return ClientSession()

    def submitter(self, session: aiohttp.ClientSession) -> Submit:
        endpoint = ours.AsyncioEndpoint("echo", session, api_key=KEY, base_url=self.base_url)

        async def submit() -> Any:
            job = await endpoint.run({"sleep_ms": JOB_MS})
            return await job.output(timeout=60)

        return submit

    def blocking(self) -> Callable[[], Any]:
        endpoint = ours.Endpoint("echo", api_key=KEY, base_url=self.base_url)
        return lambda: endpoint.run({"sleep_ms": JOB_MS}).output(timeout=60)


class Official:
    name = "runpod 1.12"

    def __init__(self, base_url: str) -> None:
        self.sdk = official_sdk()
        self.sdk.api_key = KEY
        self.sdk.endpoint_url_base = base_url

    async def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def submitter(self, session: aiohttp.ClientSession) -> Submit:
        endpoint = self.sdk.AsyncioEndpoint("echo", session)

        async def submit() -> Any:
            job = await endpoint.run({"sleep_ms": JOB_MS})
            return await job.output(timeout=60)

        return submit

    def blocking(self) -> Callable[[], Any]:
        endpoint = self.sdk.Endpoint("echo")
        return lambda: endpoint.run({"sleep_ms": JOB_MS}).output(timeout=60)


async def measure(client: Ours | Official, singles: int, fanout: int) -> dict[str, Any]:
    session = await client.session()
    try:
        submit = client.submitter(session)
        single = await sequential(submit, singles)
        # Steady state, as in a long-running service: the session's connections are open
        # and the endpoint's workers are up before the measured burst.
        await concurrent(submit, fanout)
        many, rate = await concurrent(submit, fanout)
    finally:
        await session.close()
    blocking = client.blocking()
    sync = [await asyncio.to_thread(lambda: timed_sync(blocking)) for _ in range(singles)]
    return {"single": single, "sync": sync, "many": many, "jobs_per_s": rate}


def timed_sync(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str, q: float) -> float:
        return round(statistics.median(percentile(r[key], q) for r in rounds), 1)

    return {
        "single_p50_ms": med("single", 0.5),
        "single_p99_ms": med("single", 0.99),
        "sync_single_p50_ms": med("sync", 0.5),
        "concurrent_p50_ms": med("many", 0.5),
        "concurrent_p99_ms": med("many", 0.99),
        "concurrent_jobs_per_s": round(statistics.median(r["jobs_per_s"] for r in rounds), 1),
    }


async def run_rounds(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    clients: list[Ours | Official] = [Ours(base_url), Official(base_url)]
    rounds: dict[str, list[dict[str, Any]]] = {c.name: [] for c in clients}
    for index in range(args.rounds):
        for client in clients if index % 2 == 0 else clients[::-1]:
            rounds[client.name].append(await measure(client, args.singles, args.jobs))
    return {name: summary(r) for name, r in rounds.items()}


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=8, help="sequential jobs per round")
    parser.add_argument("--jobs", type=int, default=1000, help="concurrent jobs per round")
    args = parser.parse_args()

    port = free_port()
    env = {
        **os.environ,
        "BRIDGE_EMULATOR_API_KEYS": KEY,
        "BRIDGE_EMULATOR_RATE_LIMITS_ENABLED": "false",
    }
    command = [sys.executable, "-m", "bridge", "emulator", "--port", str(port)]
    emulator = subprocess.Popen(
        [*command, "--log-level", "WARNING"], env=env, stdout=subprocess.DEVNULL
    )
    try:
        wait_listening(port)
        figures = asyncio.run(run_rounds(f"http://127.0.0.1:{port}/v2", args))
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    mine, theirs = figures["bridge.runpod"], figures["runpod 1.12"]
    result = {
        "bench": "client_latency",
        "job_ms": JOB_MS,
        "rounds": args.rounds,
        "singles_per_round": args.singles,
        "concurrent_jobs": args.jobs,
        "clients": figures,
        "ratio_single_p50_official_to_ours": round(
            theirs["single_p50_ms"] / mine["single_p50_ms"], 1
        ),
        "ratio_jobs_per_s_ours_to_official": round(
            mine["concurrent_jobs_per_s"] / theirs["concurrent_jobs_per_s"], 2
        ),
        "target_single_p50_ms": TARGET_MS,
        "meets_target": mine["single_p50_ms"] <= TARGET_MS,
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "client_latency.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
