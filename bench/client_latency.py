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
rounds; the target (DESIGN.md §5) is single-job p50 ≤ job + 6 ms, where the job is the
emulator's ``executionTime`` of the same jobs (read from ``AsyncioJob.final_status``).

Run: ``.venv/bin/python bench/client_latency.py`` (about 70 s; ``--quick``: about 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from _common import KEY, Emulator, median
from _report import Report, ms, per_s, run, times

import bridge.runpod as ours
from bridge.runpod.http_client import ClientSession

JOB_MS = 50
OVER_JOB_MS = 6.0


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
        self.job_ms: list[float] = []  # the emulator's executionTime of our single jobs
        self.recording = False

    async def session(self) -> aiohttp.ClientSession:
        return ClientSession()

    def submitter(self, session: aiohttp.ClientSession) -> Submit:
        endpoint = ours.AsyncioEndpoint("echo", session, api_key=KEY, base_url=self.base_url)

        async def submit() -> Any:
            job = await endpoint.run({"sleep_ms": JOB_MS})
            output = await job.output(timeout=60)
            final = getattr(job, "final_status", None) or {}
            if self.recording and isinstance(final.get("executionTime"), int):
                self.job_ms.append(final["executionTime"])
            return output

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
        if isinstance(client, Ours):
            client.recording = True
        single = await sequential(submit, singles)
        if isinstance(client, Ours):
            client.recording = False
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
    mine = Ours(base_url)
    clients: list[Ours | Official] = [mine, Official(base_url)]
    rounds: dict[str, list[dict[str, Any]]] = {c.name: [] for c in clients}
    for index in range(args.rounds):
        for client in clients if index % 2 == 0 else clients[::-1]:
            rounds[client.name].append(await measure(client, args.singles, args.jobs))
    figures = {name: summary(r) for name, r in rounds.items()}
    figures["job_execution_ms_p50"] = median(mine.job_ms) if mine.job_ms else None
    return figures


def measure_all(report: Report) -> None:
    args = report.args
    if args.quick:
        args.rounds, args.singles, args.jobs = 2, 5, 200
    with (
        tempfile.TemporaryDirectory(prefix="bench-client-") as tmp,
        Emulator(Path(tmp), rate_limits=False).running() as emulator,
    ):
        figures = asyncio.run(run_rounds(emulator.base_url, args))
    mine, theirs = figures["bridge.runpod"], figures["runpod 1.12"]
    job = figures["job_execution_ms_p50"] or JOB_MS
    report.figures.update(
        job_ms=JOB_MS,
        rounds=args.rounds,
        singles_per_round=args.singles,
        concurrent_jobs=args.jobs,
        clients=figures,
    )
    report.target(
        f"client: AsyncioJob.output() p50 ≤ job + {OVER_JOB_MS:g} ms (single 50 ms job)",
        f"{ms(mine['single_p50_ms'])} (p99 {ms(mine['single_p99_ms'])})",
        mine["single_p50_ms"] <= job + OVER_JOB_MS,
        baseline=f"runpod 1.12 {ms(theirs['single_p50_ms'])}; job {ms(job)}",
        ratio=f"job + {mine['single_p50_ms'] - job:.1f} ms; "
        f"{theirs['single_p50_ms'] / mine['single_p50_ms']:.1f}x faster",
    )
    report.info(
        "client: blocking Job.output() p50 (single 50 ms job)",
        ms(mine["sync_single_p50_ms"]),
        baseline=f"runpod 1.12 {ms(theirs['sync_single_p50_ms'])}",
    )
    report.info(
        f"client: {args.jobs:,} concurrent jobs on one session, jobs/s (p50 / p99 latency)",
        f"{per_s(mine['concurrent_jobs_per_s'])} ({ms(mine['concurrent_p50_ms'])} / "
        f"{ms(mine['concurrent_p99_ms'])})",
        baseline=f"runpod 1.12 {per_s(theirs['concurrent_jobs_per_s'])} "
        f"({ms(theirs['concurrent_p50_ms'])} / {ms(theirs['concurrent_p99_ms'])})",
        ratio=times(mine["concurrent_jobs_per_s"] / theirs["concurrent_jobs_per_s"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=8, help="sequential jobs per round")
    parser.add_argument("--jobs", type=int, default=1000, help="concurrent jobs per round")
    run("client_latency", parser, measure_all)


if __name__ == "__main__":
    main()
