"""What the benchmarks need from the bridge, in one place: a deployment's ``BRIDGE_*``
environment and worker command line, a Celery client app, the JSON-door envelope; and
the baseline, a Celery worker with the bridge's Celery settings serving one no-op task
(``python bench/_bridge.py noop-worker BROKER QUEUE HOST LEVEL``).

The bridge is configured only through its environment, as an operator would. Apart from
the client library that ``client_latency.py`` measures, the product's modules are
imported here and nowhere else in ``bench/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from _common import KEY, Emulator, drain, process, redis_server
from celery import Celery

CELERY_SETTINGS: dict[str, Any] = {  # what the bridge's Celery app sets, for the baseline too
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 8,
    "worker_send_task_events": True,
    "task_send_sent_event": True,
    "broker_connection_retry_on_startup": True,
}
WORKER_ARGS = ["--without-mingle", "--without-gossip"]


def raised_budgets() -> dict[str, int]:
    """Budgets no benchmark reaches, for every operation the bridge budgets."""
    from bridge.settings import RUNPOD_BUDGETS

    return dict.fromkeys(RUNPOD_BUDGETS, 10_000_000)


class Deployment:
    """One bridge deployment on a Redis: its names (all under ``tag``), its routes (each
    to the emulator's ``echo`` endpoint), and the environment its workers get.

    Args:
        redis_url: the Redis of everything.
        tag: run-unique prefix of every key, stream and queue.
        emulator_url: the emulator's address.
        routes: route name → extra route settings (``queue`` defaults to ``tag``).
        settings: extra bridge settings (``lease_ttl_s=...``), passed as ``BRIDGE_*``.
    """

    def __init__(
        self,
        redis_url: str,
        tag: str,
        emulator_url: str,
        routes: dict[str, dict[str, Any]],
        **settings: Any,
    ) -> None:
        self.tag = tag
        self.names = {
            "redis_url": redis_url,
            "emulator_url": emulator_url,
            "key_prefix": tag,
            "requests_stream": f"{tag}:requests",
            "dlq_stream": f"{tag}:dlq",
            "default_queue": tag,
            **{k: str(v) for k, v in settings.items()},
        }
        base = {"endpoint_id": "echo", "base_url": f"{emulator_url}/v2", "queue": tag}
        self.routes = {name: {**base, **extra} for name, extra in routes.items()}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
        self.env.update({f"BRIDGE_{k.upper()}": v for k, v in self.names.items()})
        self.env["BRIDGE_ROUTES"] = json.dumps(self.routes)
        self.env["RUNPOD_API_KEY"] = KEY
        self.replies = f"{tag}:reply:bench"  # the namespace the CLI reads replies from
        self.redis = redis.Redis.from_url(redis_url)
        self._celery: Celery | None = None

    @property
    def requests_stream(self) -> str:
        return self.names["requests_stream"]

    def celery(self) -> Celery:
        """A Celery client of this deployment (what ``bridge.worker.app.app`` is for a
        producer configured with the same ``BRIDGE_*`` settings)."""
        if self._celery is None:
            from bridge.settings import BridgeSettings
            from bridge.worker.app import create_app

            self._celery = create_app(BridgeSettings(**self.names, routes=self.routes))
        return self._celery

    @contextlib.contextmanager
    def worker(
        self, name: str, logs: Path, loglevel: str, queues: str | None = None
    ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
        """A ``bridge worker`` (threads pool, 4 slots) named ``name``, ready to work."""
        hostname = f"{self.tag}-{name}@{socket.gethostname()}"
        command = [sys.executable, "-m", "bridge", "worker", "--concurrency", "4",
                   "--loglevel", loglevel, *(["--queues", queues] if queues else []),
                   "--", *WORKER_ARGS, f"--hostname={hostname}"]  # fmt: skip
        log = logs / f"worker-{name}.log"
        with process(command, self.env, log) as proc:
            wait_ready(self.celery(), proc, hostname, log)
            yield proc, hostname

    def envelope(
        self,
        job_input: dict[str, Any],
        route: str = "echo",
        reply_to: str | None = None,
        request_id: str | None = None,
    ) -> tuple[str, dict[str, str]]:
        """The request id (new unless given) and the JSON-door stream entry asking for it."""
        request_id = request_id or uuid.uuid4().hex
        body = {"id": request_id, "route": route, "input": job_input,
                "reply_to": reply_to or self.replies}  # fmt: skip
        return request_id, {"payload": json.dumps(body)}

    def send_json(self, entries: list[dict[str, str]]) -> None:
        """XADD the entries to the request stream, in one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(self.requests_stream, fields)  # type: ignore[arg-type]
        pipe.execute()

    def cleanup(self, task_ids: list[str], queues: list[str]) -> None:
        """Delete what this deployment wrote to a shared Redis: its keys, its queues'
        bindings, the Celery results of ``task_ids``."""
        client = self.redis
        keys: list[Any] = [f"celery-task-meta-{t}" for t in task_ids]
        keys += [f"_kombu.binding.{q}" for q in queues]
        for queue in queues:
            keys += list(client.scan_iter(f"{queue}*", count=1000))
        keys += list(client.scan_iter(f"{self.tag}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])

    def close(self) -> None:
        if self._celery is not None:
            self._celery.close()
        self.redis.close()


@contextlib.contextmanager
def echo_worker(prefix: str) -> Iterator[tuple[Deployment, subprocess.Popen[bytes], Path]]:
    """One ``bridge worker`` on a private Redis and the emulator without rate limits, its
    ``echo`` route's budgets raised (what the per-worker tools measure); yields the
    deployment, the worker process and a temporary directory for logs and outputs."""
    with (
        tempfile.TemporaryDirectory(prefix=f"{prefix}-") as tmp,
        redis_server(None) as redis_url,
        Emulator(Path(tmp), rate_limits=False).running() as emulator,
    ):
        tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
        bridge = Deployment(redis_url, tag, emulator.url, {"echo": {"budgets": raised_budgets()}})
        try:
            with bridge.worker("a", Path(tmp), "WARNING") as (worker, _):
                yield bridge, worker, Path(tmp)
        finally:
            bridge.close()


def send_burst(bridge: Deployment, door: str, n: int) -> None:
    """``n`` zero-ms requests at once through ``door`` (``json`` or ``celery``); returns
    when every one has its reply or result."""
    if door == "json":
        bridge.send_json([bridge.envelope({})[1] for _ in range(n)])
        if drain(bridge.redis, bridge.replies, n, time.monotonic() + 120, lambda *_: True) < n:
            raise RuntimeError("replies missing")
        return
    app = bridge.celery()
    results = [app.send_task("bridge.run", kwargs={"route": "echo", "input": {}})
               for _ in range(n)]  # fmt: skip
    for result in results:
        result.get(timeout=120, propagate=False)


def wait_ready(app: Celery, proc: subprocess.Popen[bytes], hostname: str, log: Path) -> None:
    """Until the Celery worker ``hostname`` answers a ping addressed to it alone."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if app.control.ping(destination=[hostname], timeout=0.5):
            return
    raise RuntimeError(f"worker {hostname} not ready:\n{log.read_text()[-3000:]}")


# -- the baseline: a Celery no-op round trip ----------------------------------------------------


def noop_app(broker: str) -> Celery:
    """A Celery app with the bridge's Celery settings and one no-op task."""
    app = Celery("bench_noop", broker=broker, backend=broker)
    app.conf.update(CELERY_SETTINGS)
    app.task(name="bench.noop")(noop)
    return app


def noop() -> None:
    """The baseline task: nothing, so that its round trip is Celery's own cost."""


@contextlib.contextmanager
def noop_worker(
    broker: str, tag: str, logs: Path, loglevel: str
) -> Iterator[tuple[Celery, str, subprocess.Popen[bytes]]]:
    """A no-op worker (threads pool x4, as the bridge's) on queue ``TAG-noop``; yields
    a client app, the queue and the process."""
    queue, hostname = f"{tag}-noop", f"{tag}-noop@{socket.gethostname()}"
    command = [sys.executable, __file__, "noop-worker", broker, queue, hostname, loglevel]
    app = noop_app(broker)
    log = logs / "noop.log"
    try:
        with process(command, dict(os.environ), log) as proc:
            wait_ready(app, proc, hostname, log)
            yield app, queue, proc
    finally:
        app.close()


def _run_noop_worker(broker: str, queue: str, hostname: str, loglevel: str) -> None:
    noop_app(broker).worker_main(
        ["worker", "--pool=threads", "--concurrency=4", f"--loglevel={loglevel}",
         f"--queues={queue}", "--task-events", f"--hostname={hostname}", *WORKER_ARGS]
    )  # fmt: skip


if __name__ == "__main__" and sys.argv[1:2] == ["noop-worker"]:
    _run_noop_worker(*sys.argv[2:6])
