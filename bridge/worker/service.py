"""The bridge of one worker process: ledger, budgets, HTTP session, tracker, JSON door,
and the listener for cancels and wake-ups. It lives on the process' event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from typing import Any

from celery import Celery
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from bridge.egress.celery_results import CeleryResults
from bridge.errors import RequestRejected
from bridge.ingress.envelope import Rejection
from bridge.ingress.json_door import JsonDoor
from bridge.runpod.http_client import ClientSession
from bridge.settings import BridgeSettings
from bridge.worker import metrics
from bridge.worker.breaker import Breakers
from bridge.worker.budget import Budgets, Limit, budget_trace_config
from bridge.worker.ledger import Ledger
from bridge.worker.model import REJECTED, Outcome, Request
from bridge.worker.tracker import Tracker

log = logging.getLogger("bridge.service")

DEAD_LETTER_REASONS = frozenset({"ambiguous", "submit_failed"})
"""Endings that need a person: they are also written to the dead-letter stream."""


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
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self.settings
        # Thousands of jobs share one process: wait for a free connection, never fail.
        pool = BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=64, timeout=30, health_check_interval=30
        )
        self.redis = Redis(connection_pool=pool)
        self.ledger = Ledger(self.redis, settings.key_prefix)
        limits: dict[str, dict[str, Limit]] = {}
        for route in settings.routes.values():  # routes sharing an endpoint: the lowest wins
            mine = limits.setdefault(route.endpoint_id, {})
            for op, n in route.budgets.items():
                limit = Limit(n, route.budget_window_s)
                if (
                    op not in mine
                    or limit.requests / limit.window < mine[op].requests / mine[op].window
                ):
                    mine[op] = limit
        self.budgets = Budgets(self.redis, limits, settings.key_prefix)
        self.breakers = Breakers(
            self.redis,
            settings.key_prefix,
            threshold=settings.breaker_threshold,
            open_s=settings.breaker_open_s,
        )
        self.session = ClientSession(
            trace_configs=[budget_trace_config(self.budgets), metrics.http_trace_config()]
        )
        self.results = CeleryResults(self.celery_app) if self.celery_app else None
        self.tracker = Tracker(
            settings,
            self.ledger,
            self.session,
            finish=self.deliver,
            progress=self.progress,
            owner=self.owner,
            webhook_url=settings.webhook_url,
            breakers=self.breakers,
        )
        self.pubsub = self.redis.pubsub()
        await self.pubsub.subscribe(self.ledger.cancel_channel, self.ledger.wake_channel)
        await self.ledger.renew_lease(self.owner, settings.lease_ttl_s)
        self._tasks.append(asyncio.create_task(self._listen(), name="bridge-listener"))
        self._tasks.append(asyncio.create_task(self._keep_lease(), name="bridge-lease"))
        if self.serve_json_door:
            self.json_door = JsonDoor(
                self.redis,
                settings,
                self.ledger,
                accept=self.tracker.accept,
                reject=self.reject_entry,
                backlog=self.tracker.backlog,
                route_open=self.route_open,
            )
            self._tasks.append(asyncio.create_task(self.json_door.run(), name="bridge-json-door"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await task
        await self.tracker.close()
        with contextlib.suppress(RedisError, OSError):
            await self.ledger.drop_lease(self.owner)  # others adopt our requests at once
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        await self.session.close()
        await self.redis.aclose()
        if self.results is not None:
            self.results.close()

    # -- delivery --------------------------------------------------------------------------

    async def deliver(self, request: Request, outcome: Outcome) -> None:
        """Deliver the one final reply; only the process that wins the ledger's finish
        writes the Celery result and continues the canvas."""
        route = self.settings.routes.get(request.route)
        reply = outcome.reply(request.id, request.route, request.accepted_at)
        won = await self.ledger.finalize(
            request.id,
            request.route,
            reply,
            reply_to=request.reply_to,
            reply_ttl_s=route.reply_ttl_s if route else 3600,
            result_ttl_s=route.result_ttl_s if route else 86400,
        )
        if not won:
            log.info("request %s was already finished elsewhere", request.id)
            return
        metrics.observe_final(
            request.route, request.mode, outcome.status, outcome.reason, outcome.job,
            time.time() - request.accepted_at,
        )  # fmt: skip
        if outcome.reason in DEAD_LETTER_REASONS:
            await self.dead_letter(
                reason=outcome.reason or "",
                message=outcome.message or "",
                request_id=request.id,
                payload=json.dumps(request.to_record(), default=str),
                route=request.route,
                job_id=outcome.job_id,
                details={"attempts": outcome.history, "timings": reply.get("timings")},
            )
        log.info(
            "request %s %s (job %s, route %s)", request.id, outcome.status, outcome.job_id,
            request.route,
        )  # fmt: skip
        if self.results is not None and request.continuation is not None:
            endpoint_id = route.endpoint_id if route else ""
            await self.results.finish(request.continuation, outcome, request.id, endpoint_id)

    async def route_open(self, route: str) -> float:
        """Seconds until ``route``'s endpoint breaker lets work through (0: it does)."""
        config = self.settings.routes.get(route)
        if config is None:
            return 0.0
        state = await self.breakers.get(config.endpoint_id)
        return state.retry_in(self.breakers.open_s, time.time())

    async def recover(self, limit: int = 1000, *, full: bool = False) -> int:
        """Adopt requests whose worker's lease expired and follow them here (``full``:
        look at every in-flight request, not only when an owner went silent)."""
        routes = list(self.settings.routes)
        adopted = await self.ledger.adopt_orphans(
            self.owner, routes, limit, lease_ttl_s=self.settings.lease_ttl_s, full=full
        )
        resumed = 0
        for found in adopted:
            own = found.startswith("=")
            resumed += await self.tracker.resume(found.removeprefix("="), own=own)
        if resumed:
            log.info("resumed %d request(s) no live process was following", resumed)
        return resumed

    async def _keep_lease(self) -> None:
        """Renew our lease and adopt orphans, forever; Redis outages are waited out."""
        settings = self.settings
        every = min(settings.lease_ttl_s / 3, settings.recovery_interval_s)
        next_full = 0.0  # at start-up first: requests left by owners we never heard of
        while True:
            await asyncio.sleep(every)
            try:
                await self.ledger.renew_lease(self.owner, settings.lease_ttl_s)
                full = time.monotonic() >= next_full
                await self.recover(full=full)
                if full:
                    next_full = time.monotonic() + settings.full_recovery_s
            except (RedisError, OSError) as exc:
                log.warning("lease renewal / recovery failed (%s); retrying", exc)

    async def progress(self, request: Request, state: str, meta: dict[str, Any]) -> None:
        if self.results is not None and request.continuation is not None:
            await self.results.progress(request.continuation.task_id, state, meta)

    async def reject_entry(self, rejection: Rejection, fields: dict[bytes, bytes]) -> None:
        """Answer (when a reply list is known) and dead-letter a refused JSON-door entry."""
        payload = fields.get(b"payload", b"")
        await self.dead_letter(
            reason=rejection.reason,
            message=rejection.message,
            request_id=rejection.request_id,
            payload=payload.decode("utf-8", "replace"),
        )
        if rejection.reply_to:
            outcome = Outcome(REJECTED, reason=rejection.reason, message=rejection.message)
            reply = outcome.reply(rejection.request_id or "", "", time.time())
            await self.redis.rpush(rejection.reply_to, json.dumps(reply))
            await self.redis.expire(rejection.reply_to, 3600)

    async def reject_request(self, request: Request, error: RequestRejected) -> None:
        """Refuse a Celery-door request: reply, dead letter, and a failed task result."""
        await self.dead_letter(
            reason=error.reason,
            message=error.message,
            request_id=request.id,
            payload=json.dumps(request.to_record(), default=str),
            route=request.route,
        )
        outcome = Outcome(REJECTED, reason=error.reason, message=error.message)
        if request.reply_to:
            reply = outcome.reply(request.id, request.route, request.accepted_at)
            await self.redis.rpush(request.reply_to, json.dumps(reply))
            await self.redis.expire(request.reply_to, 3600)
        if self.results is not None and request.continuation is not None:
            await self.results.finish(request.continuation, outcome, request.id, "")

    async def dead_letter(
        self,
        *,
        reason: str,
        message: str,
        request_id: str | None,
        payload: str,
        route: str = "",
        job_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append to the dead-letter stream: the original request, why, and what happened
        (``details``: attempt history, timings). Never an API key: none is in a request."""
        entry: dict[Any, Any] = {
            "reason": reason,
            "message": message,
            "request_id": request_id or "",
            "route": route,
            "job_id": job_id or "",
            "payload": payload,
            "details": json.dumps(details or {}, default=str),
            "at": f"{time.time():.3f}",
        }
        await self.redis.xadd(self.settings.dlq_stream, entry, maxlen=100_000, approximate=True)
        metrics.DEAD_LETTERS.labels(reason).inc()

    # -- cancels and wake-ups ------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            try:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("cancel/wake listener lost Redis (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if message is None:
                continue
            channel = _text(message["channel"])
            data = _text(message["data"])
            if channel == self.ledger.cancel_channel:
                self.tracker.cancel(data)
            elif data.startswith("purge:"):
                self.tracker.wake_route(data.removeprefix("purge:"), purged=True)
            else:
                self.tracker.wake(data)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
