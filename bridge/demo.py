"""``bridge demo``: a short guided tour on embedded defaults.

It starts the emulator in this process (port 8000, or any free port when 8000 is
taken) and drives it with the ``bridge.runpod`` client: a plain job, concurrent async
jobs, a streamed job, a job cancelled in flight, a failing job, and a health table.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from rich.console import Console
from rich.table import Table

import bridge.runpod as runpod
from bridge.emulator.testing import running_emulator
from bridge.errors import JobCancelled, JobFailed


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_demo(console: Console | None = None, port: int = 8000) -> None:
    """Run the tour; raises if any step does not behave as shown."""
    console = console or Console()
    chosen = port if _port_free(port) else 0
    with running_emulator(port=chosen) as emu:
        console.rule("[bold]bridge demo")
        console.print(f"emulator at [cyan]{emu.base_url}[/] (endpoints echo, stream, fail)")
        options: dict[str, Any] = {"api_key": emu.api_key, "base_url": emu.base_url}
        _plain(console, runpod.Endpoint("echo", **options))
        asyncio.run(_concurrent(console, options))
        _streamed(console, runpod.Endpoint("stream", **options))
        _cancelled(console, runpod.Endpoint("echo", **options))
        _failing(console, runpod.Endpoint("fail", **options))
        _health(console, options)
        console.rule("[bold green]tour complete")


def _plain(console: Console, endpoint: runpod.Endpoint) -> None:
    console.print("\n[bold]1. A plain job[/] (run_sync, 50 ms of work)")
    start = time.perf_counter()
    output = endpoint.run_sync({"prompt": "a lighthouse at dusk", "sleep_ms": 50}, timeout=30)
    elapsed = (time.perf_counter() - start) * 1000
    console.print(f"   output {output} in [green]{elapsed:.0f} ms[/]")


async def _concurrent(console: Console, options: dict[str, Any]) -> None:
    console.print("\n[bold]2. Ten jobs at once[/] (AsyncioEndpoint on one aiohttp session)")
    async with runpod.http_client.ClientSession() as session:
        endpoint = runpod.AsyncioEndpoint("echo", session, **options)
        start = time.perf_counter()
        jobs = [await endpoint.run({"n": n, "sleep_ms": 100}) for n in range(10)]
        outputs = await asyncio.gather(*(job.output(timeout=30) for job in jobs))
        elapsed = (time.perf_counter() - start) * 1000
    console.print(f"   {len(outputs)} outputs, n = {[o['n'] for o in outputs]}")
    console.print(f"   all done in [green]{elapsed:.0f} ms[/] (each job sleeps 100 ms)")


def _streamed(console: Console, endpoint: runpod.Endpoint) -> None:
    console.print("\n[bold]3. A streamed job[/] (chunks appear as the handler yields them)")
    job = endpoint.run({"n": 6, "interval_ms": 150})
    with console.status("   streaming…"):
        for chunk in job.stream():
            console.print(f"   chunk {chunk}")
    console.print(f"   final status [green]{job.status()['status']}[/]")


def _cancelled(console: Console, endpoint: runpod.Endpoint) -> None:
    console.print("\n[bold]4. A job cancelled in flight[/]")
    job = endpoint.run({"sleep_ms": 60_000})
    console.print(f"   submitted {job.job_id}, status {job.status()['status']}")
    job.cancel()
    try:
        job.output(timeout=10)
    except JobCancelled as exc:
        console.print(f"   output() raised [yellow]{type(exc).__name__}[/]: {exc}")
    else:
        raise RuntimeError("the cancelled job returned an output")


def _failing(console: Console, endpoint: runpod.Endpoint) -> None:
    console.print("\n[bold]5. A failing job[/]")
    try:
        endpoint.run_sync({"message": "CUDA out of memory (simulated)"}, timeout=30)
    except JobFailed as exc:
        console.print(f"   run_sync raised [red]{type(exc).__name__}[/] for job {exc.job_id}")
        console.print(f"   endpoint error: {_error_message(exc.error)}")
    else:
        raise RuntimeError("the failing job did not fail")


def _error_message(error: Any) -> str:
    """RunPod reports a handler's exception as a JSON document; show its message."""
    try:
        return str(json.loads(error)["error_message"])
    except (TypeError, ValueError, KeyError):
        return str(error)


def _health(console: Console, options: dict[str, Any]) -> None:
    console.print("\n[bold]6. Endpoint health[/]")
    table = Table("endpoint", "completed", "failed", "in queue", "in progress", "workers idle")
    for name in ("echo", "stream", "fail"):
        health = runpod.Endpoint(name, **options).health()
        jobs, workers = health["jobs"], health["workers"]
        table.add_row(
            name,
            str(jobs["completed"]),
            str(jobs["failed"]),
            str(jobs["inQueue"]),
            str(jobs["inProgress"]),
            str(workers.get("idle", 0)),
        )
    console.print(table)
