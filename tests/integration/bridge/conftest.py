"""Fixtures for the bridge's integration tests: a real Redis, the emulator on a socket,
and a real Celery worker in a subprocess (``python -m bridge worker``).

Every bridge a test builds gets its own Redis key prefix, request stream, Celery queue
and worker node name, so modules (and concurrent runs) never see each other's messages.
``make_bridge(**overrides)`` builds one with settings overrides (``broker_url=…``) and
per-route changes (``routes={"echo": {"max_in_flight": 2}}``); ``bridge`` is the default.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from bridge.emulator.testing import EmulatorHandle, wait_until
from bridge.producer import JsonDoorClient
from bridge.settings import BridgeSettings, RouteConfig
from bridge.worker.app import create_app

# How long a test waits for a late duplicate reply once the JSON door has acknowledged
# every entry (so no redelivery is pending): a reply still in the worker's pipeline shows
# up within milliseconds on an idle machine, and within a second with a CPU hog running.
LATE_REPLY_GRACE_S = 3.0


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
    tag: str = ""
    node: str = ""

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

    def assert_no_late_reply(self, reply_to: str, grace: float = LATE_REPLY_GRACE_S) -> None:
        """Exactly one final reply: nothing more arrives on ``reply_to`` (see
        ``assert_no_late_replies``)."""
        assert_no_late_replies(self.redis, self.settings, [reply_to], grace)

    @property
    def queues(self) -> set[str]:
        """The Celery queues this bridge's worker consumes."""
        return {self.settings.default_queue, *(r.queue for r in self.settings.routes.values())}

    def start(self) -> None:
        """Start the worker subprocess and wait until it answers."""
        proc = start_worker(self.env, self.log, celery_args=("-n", self.node))
        self.procs.append(proc)
        wait_ready(self.app, proc, self.log, node=self.node)

    def stop(self) -> None:
        """Stop every process started for this bridge (idempotent)."""
        stop_processes(self.procs)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def close_app(app: Celery) -> None:
    """Close the result backend's connections, the pub/sub of ``get()`` included, which
    ``app.close()`` leaves to the garbage collector: collected whenever it runs, an unclosed
    socket is a ResourceWarning that fails whichever test is running then. (The broker
    pool is kombu's, shared by every app on the same URL in this process: left alone.)"""
    backend = app.backend
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None:
        consumer.stop()
    client = getattr(backend, "client", None)
    if client is not None:
        client.connection_pool.disconnect()
    app.close()


def door_drained(client: redis.Redis, settings: BridgeSettings) -> bool:
    """Whether the JSON door has read and acknowledged every entry of its request stream
    so far (Redis's own bookkeeping of the consumer group: nothing left to redeliver)."""
    stream, group = settings.requests_stream, settings.consumer_group
    last = _text(client.xinfo_stream(stream)["last-generated-id"])
    for info in client.xinfo_groups(stream):
        if _text(info["name"]) == group:
            return info["pending"] == 0 and _text(info["last-delivered-id"]) == last
    return False


def assert_no_late_replies(
    client: redis.Redis,
    settings: BridgeSettings,
    reply_lists: list[str],
    grace: float = LATE_REPLY_GRACE_S,
) -> None:
    """Call once every final reply was read: waits until the door has handled every
    entry, then ``grace`` seconds, and fails if any of ``reply_lists`` got more."""
    wait_until(lambda: door_drained(client, settings), timeout=60, interval=0.05)
    time.sleep(grace)  # the grace period itself: a late duplicate has this long to show
    late = {key: n for key in reply_lists if (n := client.llen(key))}
    assert not late, f"late replies (list: count): {late}"


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout)


def start_worker(
    env: dict[str, str], log: Path, *extra: str, celery_args: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """``bridge worker`` with ``extra`` options; ``celery_args`` go on to Celery."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "worker", "--concurrency", "4", *extra,
             "--", "--without-mingle", "--without-gossip", *celery_args],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_ready(
    app: Celery,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 30,
    node: str | None = None,
) -> None:
    """Wait until the worker answers a ping (only ``node`` counts when given: other
    workers on the same broker answer broadcasts too)."""
    deadline = time.monotonic() + timeout
    destination = [node] if node else None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        if app.control.ping(destination=destination, timeout=0.5):
            return
    raise AssertionError(f"worker not ready in {timeout}s:\n{log.read_text()[-3000:]}")


def routes_toml(routes: dict[str, RouteConfig]) -> str:
    """A routes file holding ``routes`` (``[routes.NAME]`` tables; None values left out)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(str(v))

    lines = []
    for name, route in routes.items():
        lines.append(f"[routes.{json.dumps(name)}]")
        lines += [f"{k} = {value(v)}" for k, v in route.model_dump().items() if v is not None]
        lines.append("")
    return "\n".join(lines)


MakeBridge = Callable[..., Bridge]


@pytest.fixture(scope="module")
def make_bridge(
    emulator: EmulatorHandle, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MakeBridge]:
    """Build and start bridges; every one is stopped and its Redis keys removed when the
    module ends.

    ``make_bridge(routes=..., config_file=False, start=True, **overrides)``:
    ``overrides`` are settings fields (they reach the worker as ``BRIDGE_*`` variables);
    ``routes`` maps a route name to field changes (a new name starts from ``echo``);
    ``config_file`` hands the routes over as a TOML file (``BRIDGE_CONFIG``) instead of
    ``BRIDGE_ROUTES``; ``start=False`` builds everything but starts no worker.
    """
    made: list[Bridge] = []
    client = redis.Redis.from_url(redis_url)

    def make(
        *,
        routes: dict[str, dict[str, Any]] | None = None,
        config_file: bool = False,
        start: bool = True,
        **overrides: Any,
    ) -> Bridge:
        tag = uuid.uuid4().hex[:8]
        settings_overrides = {
            "redis_url": redis_url,
            "emulator_url": emulator.url,
            "key_prefix": f"bt-{tag}",
            "requests_stream": f"bt-{tag}:requests",
            "dlq_stream": f"bt-{tag}:dlq",
            "default_queue": f"bt-{tag}",
            **overrides,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
        env.update({f"BRIDGE_{k.upper()}": str(v) for k, v in settings_overrides.items()})
        base = BridgeSettings.load(**settings_overrides).routes
        base["external"] = base["echo"].model_copy(update={"endpoint_id": "external"})
        changes: dict[str, dict[str, Any]] = {name: {} for name in base} | (routes or {})
        built: dict[str, RouteConfig] = {}
        for name, change in changes.items():
            start_from = base.get(name, base["echo"]).model_dump()
            # hold status requests for all 500 jobs of the load test
            defaults = {"queue": settings_overrides["default_queue"], "long_poll_below": 1000}
            built[name] = RouteConfig.model_validate({**start_from, **defaults, **change})
        workdir = tmp_path_factory.mktemp("bridge")
        if config_file:
            path = workdir / "bridge.toml"
            path.write_text(routes_toml(built), encoding="utf-8")
            env["BRIDGE_CONFIG"] = str(path)
            settings = BridgeSettings.load(path, **settings_overrides)
        else:
            env["BRIDGE_ROUTES"] = json.dumps(
                {name: route.model_dump(mode="json") for name, route in built.items()}
            )
            settings = BridgeSettings.load(**settings_overrides, routes=built)
        assert settings.routes == built
        app = create_app(settings)
        log = workdir / "worker.log"
        node = f"bt-{tag}@{socket.gethostname()}"
        handle = Bridge(
            settings, env, app, JsonDoorClient(settings, client), client, log, [], tag, node
        )
        made.append(handle)
        if start:
            handle.start()
        return handle

    try:
        yield make
    finally:
        for handle in made:
            handle.stop()
        for handle in made:
            for key in client.scan_iter(f"bt-{handle.tag}*"):
                client.delete(key)
            close_app(handle.app)
        client.close()
        # What this module left unclosed is collected now, and blamed on this module, not
        # on whichever later test the garbage collector happens to run in.
        gc.collect()


@pytest.fixture(scope="module")
def bridge(make_bridge: MakeBridge) -> Bridge:
    """A bridge worker on the built-in routes (plus ``external``), one per module."""
    return make_bridge()
