"""``bridge demo``: the whole bridge on embedded defaults, then a short guided tour.

It starts the emulator (port 8000, or a free port when 8000 is taken), finds Redis or
starts a private ``redis-server``, and runs a bridge worker and beat as subprocesses
(:mod:`bridge.devstack`). The tour goes through both doors: a plain job and a streamed
one (JSON door), a job cancelled in flight, a failing job, the Celery door, the health
table from beat's snapshots, and the client library on its own. Everything it started
is stopped at the end, and every Redis key it wrote removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

import bridge.runpod as runpod
from bridge.devstack import Stack, pids, running_stack
from bridge.emulator.testing import EmulatorHandle, running_emulator
from bridge.errors import BridgeError, JobFailed
from bridge.producer import JsonDoorClient


class DemoError(BridgeError):
    """A step of the tour did not behave as shown."""


def _port_free(port: int) -> bool:
    """Whether the emulator can listen on ``port`` (it binds with SO_REUSEADDR, so a port
    whose last connections linger in TIME_WAIT counts as free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def _emulator(port: int) -> Iterator[EmulatorHandle]:
    chosen = port if _port_free(port) else 0
    try:
        context = running_emulator(port=chosen)
        handle = context.__enter__()
    except OSError:  # taken between the check and the bind
        context = running_emulator(port=0)
        handle = context.__enter__()
    try:
        yield handle
    finally:
        context.__exit__(None, None, None)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM stops the demo through the same clean-up as Ctrl-C."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(console: Console | None = None, port: int = 8000) -> None:
    """Start everything, run the tour, stop everything; raises DemoError (after the
    clean-up) if a step does not behave as shown."""
    console = console or Console()
    console.rule("[bold]bridge demo")
    started = time.monotonic()
    with _sigterm_as_interrupt(), _emulator(port) as emu:
        _ok(console, "emulator", f"{emu.base_url}  (endpoints echo, stream, fail)")
        with console.status("starting Redis, a bridge worker and beat…") as status:
            stack_context = running_stack(
                emu.url, health_interval_s=1.0, progress=lambda line: status.update(line)
            )
            stack = stack_context.__enter__()
        try:
            _started(console, stack, started)
            Tour(console, emu, stack).run()
        finally:
            with console.status("stopping the worker and beat…"):
                stack_context.__exit__(None, None, None)
            left = [name for name, p in stack.processes.items() if p.poll() is None]
            if left:
                raise DemoError(f"still running after the clean-up: {', '.join(left)}")
            stopped = ", ".join(f"{name} (pid {pid})" for name, pid in pids(stack).items())
            _ok(console, "stopped", f"{stopped}; Redis keys {stack.tag}* removed")
    _ok(console, "stopped", "emulator")
    console.rule(f"[bold green]tour complete in {time.monotonic() - started:.1f} s")


def _ok(console: Console, what: str, detail: str) -> None:
    console.print(Text.assemble(("  ✓ ", "green"), (f"{what:<14}", "bold"), detail))


def _started(console: Console, stack: Stack, started: float) -> None:
    where = "private redis-server, stopped at the end" if stack.redis.private else "found"
    _ok(console, "Redis", f"{stack.redis.url}  ({where})")
    ids = pids(stack)
    _ok(
        console,
        "bridge worker",
        f"pid {ids['worker']}, ready after {time.monotonic() - started:.1f} s, queue {stack.tag}",
    )
    _ok(console, "beat", f"pid {ids['beat']}, health checks every second")
    console.print(
        Text(
            f"    everything is named {stack.tag}*: stream {stack.settings.requests_stream}, "
            f"logs in {stack.workdir}",
            style="dim",
        )
    )


class Tour:
    """The tour's steps; each raises DemoError when the bridge does not do as shown."""

    def __init__(self, console: Console, emu: EmulatorHandle, stack: Stack) -> None:
        self.console = console
        self.emu = emu
        self.stack = stack
        self.client = JsonDoorClient(stack.settings)

    def run(self) -> None:
        try:
            self.plain()
            self.streamed()
            self.cancelled()
            self.failing()
            self.celery_door()
            self.health()
            asyncio.run(self.client_library())
        finally:
            self.client.redis.close()

    def step(self, number: int, title: str, detail: str) -> None:
        self.console.print()
        self.console.print(Text.assemble((f"{number}. {title}", "bold"), (f"  {detail}", "dim")))

    def result(self, reply_to: str, timeout: float = 30) -> dict[str, Any]:
        for message in self.client.replies(reply_to, timeout):
            if message["type"] == "result":
                return message
        raise DemoError(f"no result on {reply_to} within {timeout:g} s")

    def plain(self) -> None:
        self.step(1, "A plain job", "JSON door: XADD an envelope, BLPOP the reply list")
        start = time.perf_counter()
        request_id, reply_to = self.client.send("echo", {"prompt": "a lighthouse", "sleep_ms": 50})
        self.console.print(Text(f"   XADD {self.stack.settings.requests_stream} {request_id}"))
        with self.console.status("   waiting for the reply…"):
            reply = self.result(reply_to)
        elapsed = (time.perf_counter() - start) * 1000
        self.expect(reply, "COMPLETED")
        self.console.print(
            Text.assemble(
                "   ", ("COMPLETED", "green"), f" in {elapsed:.0f} ms (the job sleeps 50 ms), ",
                f"job {reply['job_id']}: ", json.dumps(reply["output"]),
            )
        )  # fmt: skip

    def streamed(self) -> None:
        self.step(
            2, "A streamed job", "mode stream: each chunk is RPUSHed as the handler yields it"
        )
        start = time.perf_counter()
        _, reply_to = self.client.send("stream", {"n": 5, "interval_ms": 200}, mode="stream")
        chunks = 0
        final: dict[str, Any] | None = None
        with self.console.status("   streaming…") as status:
            for message in self.client.replies(reply_to, timeout=30):
                elapsed = time.perf_counter() - start
                if message["type"] == "chunk":
                    chunks += 1
                    self.console.print(
                        Text(f"   +{elapsed:.2f} s  chunk {message['seq']}: "
                             f"{json.dumps(message['output'])}")
                    )  # fmt: skip
                    status.update(f"   streaming… {chunks} chunk(s)")
                else:
                    final = message
        if final is None:
            raise DemoError("the streamed job sent no result")
        self.expect(final, "COMPLETED")
        if chunks != 5:
            raise DemoError(f"expected 5 chunks, got {chunks}")
        self.console.print(Text.assemble("   ", ("COMPLETED", "green"), f" after {chunks} chunks"))

    def cancelled(self) -> None:
        self.step(3, "A job cancelled in flight", "the cancel reaches the endpoint: POST /cancel")
        before = int(self.emu.stats("echo").get("cancels", 0))
        request_id, reply_to = self.client.send("echo", {"sleep_ms": 60_000})
        with self.console.status("   waiting for the job to reach the endpoint…"):
            job_id = self.wait_for(lambda: self.client.job_id(request_id))
        status = runpod.Endpoint("echo", api_key=self.emu.api_key, base_url=self.emu.base_url)
        state = status.job(job_id).status()["status"]
        self.console.print(Text(f"   job {job_id} is {state} (it would run a minute)"))
        self.console.print(
            Text(f"   bridge cancel {request_id}  →  {self.client.cancel(request_id)}")
        )
        with self.console.status("   waiting for the reply…"):
            reply = self.result(reply_to)
        self.expect(reply, "CANCELLED")
        cancels = int(self.emu.stats("echo").get("cancels", 0)) - before
        self.console.print(
            Text.assemble(
                "   ", ("CANCELLED", "yellow"), f" (reason {reply.get('reason')}); ",
                f"the endpoint received {cancels} cancel(s)",
            )
        )  # fmt: skip
        if cancels < 1:
            raise DemoError("the endpoint never received the cancel")

    def failing(self) -> None:
        self.step(4, "A failing job", "the endpoint's error comes back in the reply")
        message = "CUDA out of memory (simulated)"
        _, reply_to = self.client.send("fail", {"message": message})
        with self.console.status("   waiting for the reply…"):
            reply = self.result(reply_to)
        self.expect(reply, "FAILED")
        error = _error_message(reply.get("error"))
        self.console.print(Text.assemble("   ", ("FAILED", "red"), f": {error}"))
        if message not in error:
            raise DemoError(f"unexpected error: {error}")

    def celery_door(self) -> None:
        self.step(5, "The Celery door", 'app.send_task("bridge.run", kwargs=…).get()')
        from bridge.worker.app import create_app

        app = create_app(self.stack.settings)
        sent: list[str] = []
        try:
            start = time.perf_counter()
            result = app.send_task(
                "bridge.run", kwargs={"route": "echo", "input": {"prompt": "via Celery"}}
            )
            sent.append(result.id)
            with self.console.status("   result.get()…"):
                output = result.get(timeout=30)
            elapsed = (time.perf_counter() - start) * 1000
            self.console.print(Text(f"   get() returned {output!r} in {elapsed:.0f} ms"))
            if output != {"prompt": "via Celery"}:
                raise DemoError(f"unexpected output {output!r}")
            failing = app.send_task("bridge.run", kwargs={"route": "fail", "input": {}})
            sent.append(failing.id)
            try:
                failing.get(timeout=30)
            except JobFailed as exc:
                self.console.print(
                    Text.assemble("   a failing job: get() raised ", (type(exc).__name__, "red"),
                                  f" (job {exc.job_id}, status {exc.status})")
                )  # fmt: skip
            else:
                raise DemoError("the failing job's get() did not raise")
        finally:
            with contextlib.suppress(Exception):  # best effort: results expire anyway
                for task_id in sent:
                    app.AsyncResult(task_id).forget()
            app.close()

    def health(self) -> None:
        self.step(6, "Endpoint health", "beat's /health snapshots, as `bridge health` shows them")
        routes = sorted(self.stack.settings.routes)
        with self.console.status("   waiting for beat's first snapshots…"):
            snaps = self.wait_for(lambda: self.snapshots(routes))
        table = Table("route", "age", "queued", "running", "done", "failed", "workers",
                      "status")  # fmt: skip
        for snap in snaps:
            jobs = snap.get("health", {}).get("jobs", {})
            workers = snap.get("health", {}).get("workers", {})
            table.add_row(
                snap["route"], f"{time.time() - snap['at']:.1f}s",
                *(str(jobs.get(k, "-")) for k in ("inQueue", "inProgress", "completed", "failed")),
                f"{workers.get('idle', 0)} idle, {workers.get('running', 0)} busy",
                "; ".join(snap.get("warnings") or []) or ("ok" if snap.get("ok") else "error"),
            )  # fmt: skip
        self.console.print(table)

    async def client_library(self) -> None:
        self.step(7, "The client library alone", "ten jobs at once on one AsyncioEndpoint")
        async with runpod.http_client.ClientSession() as session:
            endpoint = runpod.AsyncioEndpoint(
                "echo", session, api_key=self.emu.api_key, base_url=self.emu.base_url
            )
            start = time.perf_counter()
            jobs = [await endpoint.run({"n": n, "sleep_ms": 100}) for n in range(10)]
            outputs = await asyncio.gather(*(job.output(timeout=30) for job in jobs))
            elapsed = (time.perf_counter() - start) * 1000
        if [o["n"] for o in outputs] != list(range(10)):
            raise DemoError(f"unexpected outputs {outputs!r}")
        self.console.print(
            Text(f"   10 outputs in {elapsed:.0f} ms (each job sleeps 100 ms), no worker needed")
        )

    def snapshots(self, routes: list[str]) -> list[dict[str, Any]] | None:
        found = [self.client.health(route) for route in routes]
        return [snap for snap in found if snap] if all(found) else None

    def expect(self, reply: dict[str, Any], status: str) -> None:
        if reply.get("status") != status:
            raise DemoError(f"expected {status}, got {json.dumps(reply)}")

    def wait_for(self, check: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.02)
        raise DemoError(f"timed out after {timeout:g} s")


def _error_message(error: Any) -> str:
    """RunPod reports a handler's exception as a JSON document; show its message."""
    try:
        return str(json.loads(error)["error_message"])
    except (TypeError, ValueError, KeyError):
        return str(error)
