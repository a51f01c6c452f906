"""A whole bridge on one machine, for ``bridge demo`` and the tests that need one: Redis
(the one that answers, or a private ``redis-server`` started and stopped here), a bridge
worker and Celery beat as subprocesses (``python -m bridge worker|beat``), pointed at an
emulator. Everything a stack writes is named after its unique tag (Redis key prefix,
request and dead-letter streams, Celery queue), so two stacks on one Redis never mix,
and its keys are removed when it stops.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bridge.core.connection import sync_redis
from bridge.errors import BridgeError
from bridge.settings import BridgeSettings, default_routes

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
Progress = Callable[[str], None]


class StackError(BridgeError):
    """A part of the local stack could not be started."""


def _quiet(_: str) -> None:
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    client = sync_redis(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass
class RedisServer:
    """The Redis a stack uses: ``private`` when this process started it."""

    url: str
    private: bool
    process: subprocess.Popen[bytes] | None = None


@contextmanager
def local_redis(url: str | None = None, progress: Progress = _quiet) -> Iterator[RedisServer]:
    """The Redis at ``url`` (default ``BRIDGE_REDIS_URL``, else 127.0.0.1:6379) when it
    answers; else a private ``redis-server`` on a free port, without persistence, stopped
    on exit."""
    url = url or os.environ.get("BRIDGE_REDIS_URL") or DEFAULT_REDIS_URL
    if redis_answers(url):
        yield RedisServer(url, private=False)
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError(
            f"no Redis answers at {url} and there is no redis-server to start: install one "
            "(scripts/ensure-redis does on Debian) or set BRIDGE_REDIS_URL"
        )
    progress(f"nothing answers at {url}: starting a private redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bridge-redis-") as workdir:
        proc = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            private_url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while not redis_answers(private_url, timeout=0.2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise StackError(f"the private redis-server on port {port} did not start")
                time.sleep(0.05)
            yield RedisServer(private_url, private=True, process=proc)
        finally:
            stop_processes([proc])


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    """SIGTERM each process, wait (bounded), SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@dataclass
class Stack:
    """A running worker (and beat) with the settings and environment they were given."""

    tag: str
    settings: BridgeSettings
    env: dict[str, str]
    workdir: Path
    node: str
    redis: RedisServer
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``python -m bridge ARGS`` with the stack's environment; output to its log."""
        with self.log_path(name).open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and package
                [sys.executable, "-m", "bridge", *args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.processes[name] = proc
        return proc

    def stop(self) -> None:
        """Stop every process of the stack (idempotent)."""
        stop_processes(list(self.processes.values()))

    def remove_keys(self) -> int:
        """Delete every Redis key the stack wrote (its prefix, queue and bindings)."""
        client = sync_redis(self.settings.redis_url, self.settings.sentinel_master)
        try:
            keys = [*client.scan_iter(f"{self.tag}*"), *client.scan_iter(f"_kombu.*{self.tag}*")]
            return int(client.delete(*keys)) if keys else 0
        finally:
            client.close()


def stack_settings(
    tag: str, redis_url: str, emulator_url: str, health_interval_s: float = 30.0
) -> BridgeSettings:
    """The built-in routes (``echo``, ``stream``, ``fail``) on the emulator, with
    everything named after ``tag``."""
    routes = {
        name: route.model_copy(update={"queue": tag, "health_interval_s": health_interval_s})
        for name, route in default_routes(emulator_url).items()
    }
    return BridgeSettings.load(
        redis_url=redis_url,
        emulator_url=emulator_url,
        key_prefix=tag,
        requests_stream=f"{tag}:requests",
        dlq_stream=f"{tag}:dlq",
        default_queue=tag,
        routes=routes,
    )


def stack_env(settings: BridgeSettings) -> dict[str, str]:
    """This process' environment without BRIDGE_*/RUNPOD_* variables, plus the stack's
    settings as the worker, beat and ``bridge`` commands read them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
    names = ("redis_url", "emulator_url", "key_prefix", "requests_stream", "dlq_stream",
             "default_queue")  # fmt: skip
    env.update({f"BRIDGE_{name.upper()}": str(getattr(settings, name)) for name in names})
    env["BRIDGE_ROUTES"] = json.dumps(
        {name: route.model_dump(mode="json") for name, route in settings.routes.items()}
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for_worker(stack: Stack, timeout: float = 60) -> None:
    """Until the stack's worker answers a ping addressed to it alone."""
    from bridge.worker.app import create_app

    app = create_app(stack.settings)
    proc = stack.processes["worker"]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(
                    f"the worker exited with {proc.returncode}:\n{stack.log_tail('worker')}"
                )
            if app.control.ping(destination=[stack.node], timeout=0.5):
                return
        raise StackError(f"the worker did not answer in {timeout:g}s:\n{stack.log_tail('worker')}")
    finally:
        app.close()


@contextmanager
def running_stack(
    emulator_url: str,
    *,
    redis_url: str | None = None,
    beat: bool = True,
    health_interval_s: float = 1.0,
    log_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    progress: Progress = _quiet,
) -> Iterator[Stack]:
    """Redis, a worker and (with ``beat``) beat on the emulator at ``emulator_url``;
    everything is stopped, and the stack's keys removed, on exit.

    Args:
        emulator_url: the emulator's address (``http://host:port``).
        redis_url: the Redis to use if it answers (see :func:`local_redis`).
        beat: also run beat (health checks every ``health_interval_s``).
        log_args: extra options for ``bridge worker`` and ``bridge beat``
            (e.g. ``("--log-format", "json")``).
        extra_env: more environment for the processes (e.g. ``RUNPOD_API_KEY``).
        progress: called with a line of text at each step.
    """
    tag = f"demo-{uuid.uuid4().hex[:8]}"
    with ExitStack() as cleanup:
        server = cleanup.enter_context(local_redis(redis_url, progress))
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix=f"{tag}-")))
        settings = stack_settings(tag, server.url, emulator_url, health_interval_s)
        node = f"{tag}@{socket.gethostname()}"
        stack = Stack(tag, settings, {**stack_env(settings), **(extra_env or {})}, workdir,
                      node, server)  # fmt: skip
        cleanup.callback(stack.remove_keys)
        cleanup.callback(stack.stop)
        stack.start(
            "worker", "worker", "--concurrency", "4", *log_args,
            "--", "--without-mingle", "--without-gossip", "-n", node,
        )  # fmt: skip
        if beat:
            stack.start("beat", "beat", "--schedule", str(workdir / "beat-schedule"), *log_args)
        wait_for_worker(stack)
        if beat and stack.processes["beat"].poll() is not None:
            raise StackError(f"beat exited:\n{stack.log_tail('beat')}")
        yield stack


def pids(stack: Stack) -> dict[str, Any]:
    """The process ids of the stack's processes (and its private Redis), by name."""
    found: dict[str, Any] = {name: p.pid for name, p in stack.processes.items()}
    if stack.redis.process is not None:
        found["redis-server"] = stack.redis.process.pid
    return found
