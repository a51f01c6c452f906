"""The Celery app: ``celery -A bridge.worker.app worker`` works as Celery users expect.

The app is built from :class:`~bridge.settings.BridgeSettings` (environment ``BRIDGE_*``,
routes file from ``BRIDGE_CONFIG``). Each worker process starts one event loop thread
and its :class:`~bridge.worker.service.BridgeService` at boot (prefork children at
``worker_process_init``; thread, solo and gevent pools at ``worker_init``).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from datetime import timedelta
from typing import Any

from celery import Celery, signals
from celery.app.control import Control
from celery.schedules import crontab
from redis.exceptions import RedisError

from bridge.core import metrics
from bridge.core.connection import sync_redis, transport_options
from bridge.core.keys import keys_for
from bridge.core.ledger import cancel_sync
from bridge.errors import ConfigError
from bridge.settings import BridgeSettings
from bridge.worker import broker
from bridge.worker.runtime import LoopThread
from bridge.worker.service import BridgeService

log = logging.getLogger("bridge.worker")


def beat_schedule(settings: BridgeSettings) -> dict[str, dict[str, Any]]:
    """Health checks and purges per route, as Celery beat entries. Beat's tasks store no
    result (thousands a day would pile up; the health snapshot is kept by the bridge) and
    expire after their interval, so after an outage they do not run back to back."""
    schedule: dict[str, dict[str, Any]] = {}
    if settings.routes and settings.reap_interval_s:
        # Live workers adopt orphans on their own; the beat does it too, so requests of a
        # dead worker are resumed even while the others are busy or few.
        schedule["bridge-reap"] = {
            "task": "bridge.reap",
            "schedule": timedelta(seconds=settings.reap_interval_s),
            "options": {
                "queue": settings.default_queue,
                "expires": settings.reap_interval_s,
                "ignore_result": True,
            },
        }
    for name, route in settings.routes.items():
        if route.health_interval_s:
            schedule[f"bridge-health-{name}"] = {
                "task": "bridge.health",
                "schedule": timedelta(seconds=route.health_interval_s),
                "args": (name,),
                "options": {
                    "queue": route.queue,
                    "expires": route.health_interval_s,
                    "ignore_result": True,
                },
            }
        if route.purge_every_s or route.purge_crontab:
            when: Any = timedelta(seconds=route.purge_every_s or 0)
            if route.purge_crontab:
                minute, hour, day, month, weekday = route.purge_crontab.split()
                when = crontab(minute, hour, weekday, day, month)
            # A purge missed during an outage is not worth running late (back to back).
            expires = route.purge_every_s or 60.0
            schedule[f"bridge-purge-{name}"] = {
                "task": "bridge.purge",
                "schedule": when,
                "args": (name,),
                "options": {"queue": route.queue, "expires": expires, "ignore_result": True},
            }
    return schedule


def record_cancels(settings: BridgeSettings, ids: list[str]) -> None:
    """Record a cancel in the ledger for each request (or Celery task) id: the request
    is answered CANCELLED, and its job cancelled, whenever it arrives or wherever it is."""
    keys = keys_for(settings)
    try:
        client = sync_redis(settings.redis_url, settings.sentinel_master)
        try:
            for one in ids:
                cancel_sync(client, keys, one)
        finally:
            client.close()
    except RedisError:
        log.exception("a cancel could not reach the bridge's Redis; the job may go on")


class BridgeControl(Control):  # type: ignore[misc]  # Celery is untyped
    """``app.control`` of the bridge's app: a revoke is recorded in the ledger before it
    is broadcast, so it holds even while no worker runs to hear the broadcast."""

    def revoke(self, task_id: Any, destination: Any = None, terminate: bool = False,
               signal: str = "SIGTERM", **kwargs: Any) -> Any:  # fmt: skip
        ids = [str(i) for i in (task_id if isinstance(task_id, list | tuple | set) else
                                [task_id])]  # fmt: skip
        record_cancels(self.app.conf.bridge_settings, ids)
        return super().revoke(task_id, destination=destination, terminate=terminate,
                              signal=signal, **kwargs)  # fmt: skip


def create_app(settings: BridgeSettings | None = None) -> Celery:
    """Build the Celery app for ``settings`` (loaded from the environment if omitted)."""
    settings = settings or BridgeSettings.load()
    celery = Celery(
        "bridge", broker=settings.broker, backend=settings.backend, control=BridgeControl
    )
    queues = {name: route.queue for name, route in settings.routes.items()}

    def route_task(name: str, args: Any, kwargs: Any, options: Any, **_: Any) -> Any:
        if name == "bridge.run":
            route = (kwargs or {}).get("route") or (args[0] if args else None)
            if isinstance(route, str) and route in queues:
                return {"queue": queues[route]}
        return None

    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.default_queue,
        task_routes=(route_task,),
        task_acks_late=True,  # our tasks only hand over: redelivery is cheap and safe
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=8,
        worker_send_task_events=True,  # Flower
        task_send_sent_event=True,
        result_expires=timedelta(days=1),
        broker_connection_retry_on_startup=True,
        # Our tasks only hand over (seconds at most), so a task still unacknowledged
        # after this was lost with its worker: redeliver it (the ledger makes that safe).
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            **transport_options(settings.broker, settings.sentinel_master),
        },
        # kombu's Redis and Sentinel transports, repaired (see bridge.worker.broker)
        broker_transport=broker.transport_for(settings.broker),
        # sentinel:// backends find their primary by name (Celery's SentinelBackend).
        result_backend_transport_options=transport_options(
            settings.backend, settings.sentinel_master
        ),
        beat_schedule=beat_schedule(settings),
        bridge_settings=settings,
    )
    celery.conf.include = ["bridge.worker.tasks"]
    return celery


class Runtime:
    """This process' loop thread and bridge service (one per worker process)."""

    _lock = threading.Lock()
    _current: Runtime | None = None

    def __init__(self, settings: BridgeSettings, celery: Celery) -> None:
        self.loop = LoopThread()
        self.loop.start()
        self.service = BridgeService(settings, celery)
        try:
            self.loop.call(self.service.start(), timeout=30)
        except BaseException:
            self.loop.stop()
            raise
        # Thousands of in-flight jobs make many small objects: collect the young ones
        # less often and leave everything loaded at boot out of collections (measured:
        # full collections took half the CPU with 10,000 jobs in flight).
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        if settings.metrics_port and metrics.serve(settings.metrics_port, settings.metrics_host):
            from bridge.core import fleet_metrics  # only where metrics are served

            fleet_metrics.register(settings)  # the fleet's state too, read at each scrape

    @classmethod
    def get(cls, celery: Celery | None = None) -> Runtime:
        with cls._lock:
            if cls._current is None:
                celery = celery or app
                cls._current = cls(celery.conf.bridge_settings, celery)
            return cls._current

    @classmethod
    def current(cls) -> Runtime | None:
        """This process' runtime, if it started one (never starts one)."""
        with cls._lock:
            return cls._current

    @classmethod
    def shutdown(cls) -> None:
        with cls._lock:
            current, cls._current = cls._current, None
        if current is not None:
            try:
                current.loop.call(current.service.stop(), timeout=30)
            finally:
                current.loop.stop()


def _is_prefork(worker: Any) -> bool:
    pool = getattr(worker, "pool_cls", None)
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    return "prefork" in str(name)


def _start_or_exit(celery: Celery | None) -> None:
    """Start this process' bridge, or stop the worker: a worker that cannot serve
    (Redis down, a route without its key file) must not look healthy. Celery only logs
    what a signal handler raises, so the process exits here, non-zero."""
    try:
        Runtime.get(celery)
    except Exception as exc:  # whatever it is, a worker that cannot serve must stop
        message = f"bridge worker cannot start: {type(exc).__name__}: {exc}"
        log.critical(message, exc_info=not isinstance(exc, ConfigError | OSError | RedisError))
        print(message, file=sys.stderr, flush=True)
        os._exit(3)


@signals.worker_init.connect
def _start_in_main_process(sender: Any = None, **_: Any) -> None:
    celery = getattr(sender, "app", None)
    if _is_prefork(sender):
        # The children start their own; check here that they can, once, before forking.
        try:
            settings: BridgeSettings = (celery or app).conf.bridge_settings
            for route in settings.routes.values():
                route.api_key()
            sync_redis(settings.redis_url, settings.sentinel_master).ping()
        except (ConfigError, OSError, RedisError) as exc:
            print(f"bridge worker cannot start: {exc}", file=sys.stderr, flush=True)
            os._exit(3)
        return
    _start_or_exit(celery)


@signals.worker_process_init.connect
def _start_in_child(**_: Any) -> None:
    _start_or_exit(None)


@signals.worker_shutdown.connect
@signals.worker_process_shutdown.connect
def _stop(**_: Any) -> None:
    Runtime.shutdown()


app = create_app()
