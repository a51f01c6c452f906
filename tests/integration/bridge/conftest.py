"""Fixtures for the bridge's integration tests: a real Redis, the emulator on a socket,
and a real Celery worker in a subprocess (``python -m bridge worker``).

Each module gets its own Redis database keys prefix, request stream and Celery queue,
so modules never see each other's messages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from bridge.emulator.testing import EmulatorHandle
from bridge.producer import JsonDoorClient
from bridge.settings import BridgeSettings
from bridge.worker.app import create_app


@dataclass
class Bridge:
    """A running bridge worker and the clients a test needs to talk to it."""

    settings: BridgeSettings
    env: dict[str, str]
    app: Celery
    producer: JsonDoorClient
    redis: redis.Redis
    log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, route: str, job_input: dict[str, Any], **kwargs: Any) -> Any:
        """``bridge.run`` through the Celery door; returns the AsyncResult."""
        return self.app.send_task(
            "bridge.run", kwargs={"route": route, "input": job_input, **kwargs}
        )

    def replies(self, reply_to: str, timeout: float = 30) -> list[dict[str, Any]]:
        return list(self.producer.replies(reply_to, timeout))

    def result(self, reply_to: str, timeout: float = 30) -> dict[str, Any]:
        replies = self.replies(reply_to, timeout)
        assert replies, f"no reply on {reply_to} within {timeout}s; worker log: {self.log}"
        assert replies[-1]["type"] == "result"
        return replies[-1]


def start_worker(env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "worker", "--concurrency", "4", *extra,
             "--", "--without-mingle", "--without-gossip"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_ready(app: Celery, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        if app.control.ping(timeout=0.5):
            return
    raise AssertionError(f"worker not ready in {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def bridge(
    emulator: EmulatorHandle, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    tag = uuid.uuid4().hex[:8]
    overrides = {
        "redis_url": redis_url,
        "emulator_url": emulator.url,
        "key_prefix": f"bt-{tag}",
        "requests_stream": f"bt-{tag}:requests",
        "dlq_stream": f"bt-{tag}:dlq",
        "default_queue": f"bt-{tag}",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
    env.update({f"BRIDGE_{k.upper()}": v for k, v in overrides.items()})
    settings = BridgeSettings.load(**overrides)
    settings.routes["external"] = settings.routes["echo"].model_copy(
        update={"endpoint_id": "external"}
    )
    for route in settings.routes.values():
        route.queue = f"bt-{tag}"
        route.long_poll_below = 1000  # hold status requests for all 500 jobs of the load test
    env["BRIDGE_ROUTES"] = (
        "{"
        + ",".join(
            f'"{name}": {route.model_dump_json()}' for name, route in settings.routes.items()
        )
        + "}"
    )
    settings = BridgeSettings.load(**overrides, routes=settings.routes)
    assert settings.routes["external"].queue == f"bt-{tag}"
    app = create_app(settings)
    client = redis.Redis.from_url(redis_url)
    log = tmp_path_factory.mktemp("bridge") / "worker.log"
    proc = start_worker(env, log)
    handle = Bridge(settings, env, app, JsonDoorClient(settings, client), client, log, [proc])
    try:
        wait_ready(app, proc, log)
        yield handle
    finally:
        for p in handle.procs:
            p.terminate()
        for p in handle.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for key in client.scan_iter(f"bt-{tag}*"):
            client.delete(key)
        client.close()
