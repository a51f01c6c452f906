"""The bridge of one worker process: its composition root.

It builds the parts (Redis, ledger, breakers, budgets, the endpoint clients, egress, the
tracker, leases and recovery, admission, the JSON door, beat's periodic work) on the
process' event loop, wires them together, runs the long-lived loops under supervision,
and answers the Celery tasks. It decides nothing about a request itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.core import metrics
from bridge.core.breaker import Breakers
from bridge.core.budget import Budgets, Limit
from bridge.core.connection import async_redis
from bridge.core.keys import Keys, keys_for
from bridge.core.leases import Leases, presence_client
from bridge.core.ledger import Ledger
from bridge.core.model import Admitted, Continuation, Refusal, Request
from bridge.egress.celery_results import CeleryResults, fast_backend
from bridge.egress.delivery import Egress
from bridge.ingress.admission import Admission
from bridge.ingress.json_door import JsonDoor
from bridge.runpod.http_client import ClientSession
from bridge.settings import BridgeSettings
from bridge.worker.periodic import Periodic
from bridge.worker.recovery import Recovery
from bridge.worker.tracker import RouteRuntime, Tracker, rules_for

log = logging.getLogger("bridge.service")


@dataclass(frozen=True, slots=True)
class Health:
    """Whether this process serves: its loop answers, its lease is fresh, its loops run."""

    ok: bool
    problems: tuple[str, ...]
    in_flight: int
    backlog: int


class BridgeService:
    """Everything one worker process runs on its loop.

    Args:
        settings: the bridge settings.
        celery_app: the Celery app whose result backend and canvases the Celery door
            uses; None when only the JSON door is served.
        json_door: consume the request stream in this process.
    """

    def __init__(
        self, settings: BridgeSettings, celery_app: Celery | None = None, *, json_door: bool = True
    ) -> None:
        self.settings = settings
        self.celery_app = celery_app
        self.serve_json_door = json_door
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.keys: Keys = keys_for(settings)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.json_door: JsonDoor | None = None

    async def start(self) -> None:
        """Build and start everything; raises (ConfigError, RedisError) when this
        process cannot serve, so the worker stops instead of looking healthy."""
        settings, keys = self.settings, self.keys
        # Thousands of jobs share one process: wait for a free connection, never fail.
        self.redis: Redis = async_redis(
            settings.redis_url, settings.sentinel_master,
            max_connections=64, wait_s=30, health_check_interval=30,
        )  # fmt: skip
        await self.redis.ping()  # fail at boot, not on the first request
        self.ledger = Ledger(self.redis, keys)
        self.budgets = Budgets(self.redis, _limits(settings), keys)
        self.breakers = Breakers(
            self.redis, keys, threshold=settings.breaker_threshold, open_s=settings.breaker_open_s
        )
        self.session = ClientSession()
        hooks = self.budgets.hooks() + metrics.HOOKS
        routes = {
            name: RouteRuntime(name, config, self.session, hooks, rules_for(settings, config))
            for name, config in settings.routes.items()
        }
        self.results = None
        if self.celery_app:
            backend = fast_backend(self.celery_app, (settings.backend, self.redis))
            self.results = CeleryResults(self.celery_app, backend, owned=backend is not self.redis)
        self.egress = Egress(self.redis, settings, keys, self.ledger, self.results)
        self.tracker = Tracker(
            settings, self.ledger, self.egress, self.breakers, routes,
            owner=self.owner, webhook_url=settings.webhook_url,
        )  # fmt: skip
        self.periodic = Periodic(
            self.redis, keys, self.breakers,
            {name: r.plain for name, r in routes.items()},
            {name: r.config.health_interval_s or 0.0 for name, r in routes.items()},
            self.budgets, {name: r.purger for name, r in routes.items()},
        )  # fmt: skip
        # Presence: one connection of our own, named; Redis drops it when we die.
        presence = presence_client(settings.redis_url, keys, self.owner, settings.sentinel_master)
        self.leases = Leases(
            self.redis, keys, self.owner, ttl_s=settings.lease_ttl_s,
            routes=list(settings.routes), presence=presence,
            adopt_after_s=settings.adopt_after_s, hung_s=settings.hung_after_s,
        )  # fmt: skip
        self.recovery = Recovery(
            self.leases, self.tracker, list(settings.routes),
            every_s=settings.renew_every_s, full_every_s=settings.full_recovery_s,
        )  # fmt: skip
        self.admission = Admission(settings)
        self.pubsub = self.redis.pubsub()
        await self.pubsub.subscribe(keys.cancel_channel, keys.wake_channel, keys.purge_channel)
        await self.leases.renew()
        self._supervise("listener", self._listen)
        self._supervise("recovery", self.recovery.run)
        if self.serve_json_door:
            self.json_door = JsonDoor(
                self.redis, settings, keys, self.ledger, self.admission,
                accept=self.accept, refuse=self.egress.refuse,
                dead_letter=self.egress.dead_letter, backlog=self.tracker.backlog,
                consumer=self.owner,
            )  # fmt: skip
            self._supervise("json-door", self.json_door.run)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await task
        await self.tracker.close()
        with contextlib.suppress(RedisError, OSError):
            await self.leases.drop()  # others adopt our requests at once
        with contextlib.suppress(RedisError, OSError):
            await self.leases.close()
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        await self.session.close()
        with contextlib.suppress(RedisError, OSError):  # Redis away: the last second's
            await self.egress.tally.aclose()  # counts are lost, nothing else
        await self.redis.aclose()
        if self.results is not None:
            await self.results.aclose()

    def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a long-lived loop; should it ever die, log why and start it again."""

        async def supervised() -> None:
            failures = 0
            while True:
                try:
                    await loop()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    failures += 1
                    log.exception("%s stopped; restarting it (%d)", name, failures)
                    await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))

        self._tasks[name] = asyncio.create_task(supervised(), name=f"bridge-{name}")

    # -- what the Celery tasks ask ---------------------------------------------------------

    async def admit_task(
        self, arguments: dict[str, Any], unexpected: list[str], continuation: Continuation
    ) -> Admitted | Refusal:
        """The Celery door: admit ``bridge.run``'s arguments (refusals are answered here;
        DEFERRED means the task should come back later)."""
        admitted = self.admission.from_task(arguments, unexpected, continuation)
        if isinstance(admitted, Refusal):
            await self.egress.refuse(admitted)
            return admitted
        return await self.accept(admitted)

    async def accept(self, request: Request) -> Admitted:
        """Hand an admitted request to the tracker; a request whose id another request
        holds is refused (``duplicate_id``), answered on its own reply list unless that
        list is the holder's."""
        admitted = await self.tracker.accept(request)
        if admitted in (Admitted.CONFLICT, Admitted.CONFLICT_UNANSWERED):
            answered = admitted is Admitted.CONFLICT
            await self.egress.refuse(Refusal(
                "duplicate_id", f"request id {request.id!r} is already taken by another "
                "request", request.id, request.route,
                request.reply_to if answered else None,
                json.dumps(request.to_record(), default=str), request.continuation,
            ))  # fmt: skip
        return admitted

    async def breaker_wait(self, route: str) -> float:
        """Seconds until ``route``'s endpoint lets work through (0: now; unknown: 0)."""
        config = self.settings.routes.get(route)
        return await self.tracker.breaker_wait(config.endpoint_id) if config else 0.0

    async def check_health(self, route: str) -> dict[str, Any]:
        return await self.periodic.check_health(route)

    async def purge(self, route: str) -> dict[str, Any]:
        return await self.periodic.purge(route)

    async def recover(self, limit: int = 1000, *, full: bool = False) -> int:
        return await self.recovery.recover(limit, full=full)

    async def health(self) -> Health:
        """This process' own view of whether it serves (``bridge ping worker``)."""
        problems = []
        for name, task in self._tasks.items():
            if task.done():
                problems.append(f"{name} stopped")
        lease_age = time.monotonic() - self.recovery.renewed_at
        if lease_age > self.settings.lease_ttl_s:
            problems.append(f"lease not renewed for {lease_age:.0f} s")
        if self.json_door is not None:
            silent = time.monotonic() - self.json_door.alive_at
            if silent > 30 + self.settings.stale_entry_s:
                problems.append(f"JSON door silent for {silent:.0f} s")
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            problems.append(f"Redis does not answer ({type(exc).__name__})")
        return Health(not problems, tuple(problems), self.tracker.in_flight(),
                      self.tracker.backlog())  # fmt: skip

    # -- cancels, wake-ups and purges ------------------------------------------------------

    async def _listen(self) -> None:
        keys = self.keys
        while True:
            try:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("cancel/wake listener lost Redis (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if message is None:
                continue
            channel, data = _text(message["channel"]), _text(message["data"])
            if channel == keys.cancel_channel:
                self.tracker.cancel(data)
            elif channel == keys.wake_channel:
                self.tracker.wake(data)
            elif channel == keys.purge_channel:
                self.tracker.purged(data)


def _limits(settings: BridgeSettings) -> dict[str, dict[str, Limit]]:
    """Budgets per endpoint; routes sharing an endpoint: the lowest rate wins."""
    limits: dict[str, dict[str, Limit]] = {}
    for route in settings.routes.values():
        mine = limits.setdefault(route.endpoint_id, {})
        for op, n in route.budgets.items():
            limit = Limit(n, route.budget_window_s)
            rate = limit.requests / limit.window
            if op not in mine or rate < mine[op].requests / mine[op].window:
                mine[op] = limit
    return limits


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
