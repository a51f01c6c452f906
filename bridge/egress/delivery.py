"""Where a request's results go: its final reply (ledger and reply list), stream chunks,
the Celery result backend and canvas, refusals, and the dead-letter stream.

Every write uses the route's TTLs. A reply target that exists and is not a list is never
written to (the ledger's scripts check its type), so no producer can make the bridge
damage a key it does not own.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from redis.asyncio import Redis

from bridge.core import metrics
from bridge.core.keys import Keys
from bridge.core.ledger import Delivery, Ledger
from bridge.core.model import REJECTED, Outcome, Refusal, Request
from bridge.core.tally import Tally
from bridge.egress.celery_results import CeleryResults
from bridge.settings import BridgeSettings, RouteConfig

log = logging.getLogger("bridge.egress")

DLQ_MAX_ENTRIES = 100_000
"""The dead-letter stream is capped (approximately) at this many entries."""

DLQ_PAYLOAD_BYTES = 64 * 1024
"""A dead letter keeps at most this much of the request; the rest stays in the ledger
record while it lives (``bridge dlq replay`` reads it from there)."""

DEFAULT_ROUTE = RouteConfig(endpoint_id="-")
"""TTLs for a refusal whose route is unknown."""


class Egress:
    """Writes what comes out of the bridge for one worker process.

    Args:
        redis: the bridge's Redis.
        settings: routes (their TTLs) and stream names.
        keys: the key schema.
        ledger: the request ledger.
        results: the Celery result backend writer (None when no Celery app).
    """

    def __init__(
        self,
        redis: Redis,
        settings: BridgeSettings,
        keys: Keys,
        ledger: Ledger,
        results: CeleryResults | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys
        self.ledger = ledger
        self.results = results
        self.tally = Tally(redis, keys)

    def _route(self, name: str) -> RouteConfig:
        return self.settings.routes.get(name) or DEFAULT_ROUTE

    # -- a request's end --------------------------------------------------------------------

    async def finalize(self, request: Request, outcome: Outcome, finisher: str) -> Delivery:
        """Store the one final reply and push it to the reply list (once, by the ledger)."""
        route = self._route(request.route)
        reply = outcome.reply(request.id, request.route, request.accepted_at)
        delivery = await self.ledger.finalize(
            request,
            reply,
            reply_ttl_s=route.reply_ttl_s,
            result_ttl_s=route.result_ttl_s,
            finisher=finisher,
        )
        if delivery is Delivery.REFUSED_TARGET:
            log.warning(
                "request %s: reply_to %r is not a list: the reply was not written to it",
                request.id, request.reply_to,
            )  # fmt: skip
        return delivery

    async def publish(
        self, request: Request, outcome: Outcome, finisher: str, done: set[str]
    ) -> None:
        """What follows a won finalize: metrics, the dead letter, the Celery result and
        canvas. ``done`` names the parts already written (a retry skips them)."""
        latency_s = time.time() - request.accepted_at
        if "metrics" not in done:
            metrics.observe_final(
                request.route, request.mode, outcome.status, outcome.reason, outcome.job,
                time.time() - request.accepted_at,
            )  # fmt: skip
            log.info(
                "request %s %s%s (job %s, route %s, %d submission(s))",
                request.id, outcome.status, f" ({outcome.reason})" if outcome.reason else "",
                outcome.job_id, request.route, outcome.submissions,
            )  # fmt: skip
            done.add("metrics")
        if outcome.dead_letter and "dlq" not in done:
            await self.dead_letter(
                reason=outcome.reason or "",
                message=outcome.message or "",
                request_id=request.id,
                payload=json.dumps(request.to_record(), default=str),
                route=request.route,
                job_id=outcome.job_id,
                details={"attempts": outcome.history[-20:], "submissions": outcome.submissions},
                finisher=finisher,
            )
            done.add("dlq")
        if "tally" not in done:
            self.tally.record(request.route, outcome.status, latency_s)  # in memory
            done.add("tally")
        if self.results is not None and request.continuation is not None and "celery" not in done:
            endpoint_id = self._route(request.route).endpoint_id
            await self.results.finish(request.continuation, outcome, request.id, endpoint_id)
            done.add("celery")

    async def chunk(self, request: Request, output: Any) -> int:
        """Push one stream chunk to the reply list (see :meth:`Ledger.push_chunk`)."""
        if not request.reply_to:
            return -1
        return await self.ledger.push_chunk(request, output, self._route(request.route).reply_ttl_s)

    async def progress(self, request: Request, state: str, meta: dict[str, Any]) -> None:
        """Show an in-flight state in the Celery result backend (Celery door)."""
        if self.results is not None and request.continuation is not None:
            await self.results.progress(request.continuation.task_id, state, meta)

    # -- refusals ---------------------------------------------------------------------------

    async def refuse(self, refusal: Refusal) -> None:
        """Answer a refused request (where its reply target may be written), fail its
        Celery task, and dead-letter it once."""
        await self.dead_letter(
            reason=refusal.reason,
            message=refusal.message,
            request_id=refusal.request_id,
            payload=refusal.payload,
            route=refusal.route,
        )
        outcome = Outcome(REJECTED, reason=refusal.reason, message=refusal.message)
        if refusal.reply_to:
            reply = outcome.reply(refusal.request_id or "", refusal.route, time.time())
            ttl = self._route(refusal.route).reply_ttl_s
            if not await self.ledger.push_reply(refusal.reply_to, reply, ttl):
                log.warning("refusal not answered: reply_to %r is not a list", refusal.reply_to)
        if self.results is not None and refusal.continuation is not None:
            await self.results.finish(refusal.continuation, outcome, refusal.request_id or "", "")
        metrics.FINISHED.labels(refusal.route, REJECTED, refusal.reason).inc()
        log.info("request %s refused (%s): %s", refusal.request_id, refusal.reason,
                 refusal.message)  # fmt: skip

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
        finisher: str = "",
    ) -> None:
        """Append to the dead-letter stream: the request (at most
        :data:`DLQ_PAYLOAD_BYTES` of it, with its full size), why, and what happened.
        ``finisher`` names the final reply of a request the ledger recorded under its id:
        replay may reopen that record, and only while it holds that very reply. Never an
        API key: none is in a request."""
        data = payload.encode("utf-8", "replace")
        entry: dict[Any, Any] = {
            "reason": reason,
            "message": message,
            "request_id": request_id or "",
            "route": route,
            "job_id": job_id or "",
            "payload": data[:DLQ_PAYLOAD_BYTES],
            "payload_bytes": len(data),
            "truncated": "1" if len(data) > DLQ_PAYLOAD_BYTES else "0",
            "finisher": finisher,
            "details": json.dumps(details or {}, default=str),
            "at": f"{time.time():.3f}",
        }
        await self.redis.xadd(self.keys.dlq_stream, entry, maxlen=DLQ_MAX_ENTRIES, approximate=True)
        metrics.DEAD_LETTERS.labels(reason).inc()
