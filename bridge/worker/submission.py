"""Submitting a request's job exactly as the ledger and the route allow.

The ledger decides whether this process may send (``submitting`` is taken once); the
route decides what a failed send means (``delivery``, ``submit_attempts``); the
endpoint's circuit breaker decides when to try at all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from bridge.errors import (
    ConnectError,
    RateLimitedError,
    RunpodError,
    ServerError,
    TransportError,
)
from bridge.logs import bind
from bridge.runpod import AsyncioEndpoint, AsyncioJob
from bridge.settings import BridgeSettings
from bridge.worker import metrics
from bridge.worker.breaker import Breakers
from bridge.worker.ledger import Ledger
from bridge.worker.model import CANCELLED, FAILED, Outcome, Request
from bridge.worker.tracked import NotOurs, Tracked

log = logging.getLogger("bridge.tracker")

Progress = Callable[[Request, str, dict[str, Any]], Awaitable[None]]


class Submitter:
    """Sends jobs for the tracker (one per worker process)."""

    def __init__(
        self,
        settings: BridgeSettings,
        ledger: Ledger,
        *,
        owner: str,
        progress: Progress,
        breakers: Breakers | None = None,
        webhook_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.owner = owner
        self.breakers = breakers
        self.webhook_url = webhook_url
        self._progress = progress

    async def submit_once(
        self, tracked: Tracked, endpoint: AsyncioEndpoint, resume: str | None
    ) -> Outcome | None:
        """Send the job unless the ledger says it was (maybe) sent; None once submitted."""
        request = tracked.request
        if resume == "submitting":  # we died between sending /run and recording its id
            if self.settings.routes[request.route].delivery == "at_most_once":
                await self.ledger.count("ambiguous_dead_lettered")
                return Outcome(
                    FAILED,
                    reason="ambiguous",
                    message="the worker stopped after sending the job and before recording "
                    "its id; the route is at_most_once, so it is not sent again",
                )
            await self.ledger.reopen(request.id)
            await self.ledger.count("ambiguous_resubmits")
            log.warning("request %s: ambiguous submit, sending again (at_least_once)", request.id)
        state, cancel = await self.ledger.mark_submitting(request.id, self.owner)
        if state != "ok":
            log.info("request %s is %s elsewhere; not submitting", request.id, state)
            raise NotOurs(state)
        if cancel or tracked.wants_cancel():
            return Outcome(CANCELLED, reason="cancelled", message="cancelled before submission")
        outcome = await self._send(tracked, endpoint)
        if outcome is not None:
            return outcome
        job = tracked.job
        assert job is not None
        _, cancel = await self.ledger.mark_submitted(request.id, job.job_id)
        await self._progress(request, "IN_QUEUE", {"job_id": job.job_id, "route": request.route})
        tracked.cancel_asked = tracked.cancel_asked or cancel
        return None

    async def _send(self, tracked: Tracked, endpoint: AsyncioEndpoint) -> Outcome | None:
        """POST the job, trying again after failures within the route's rules.

        A refusal that proves the endpoint did not take the job (connection refused,
        429) is simply tried again. A 5xx or a broken connection is ambiguous: the job
        may exist. ``at_least_once`` sends again (counted: a duplicate is possible),
        ``at_most_once`` gives up with reason ``ambiguous``. Any other error (400, 401,
        413 …) is final. After ``submit_attempts`` the request fails (``submit_failed``).
        """
        request = tracked.request
        route = self.settings.routes[request.route]
        history: list[str] = []
        for attempt in range(1, route.submit_attempts + 1):
            if await self.wait_breaker(tracked):
                return Outcome(CANCELLED, reason="cancelled", message="cancelled before submission")
            try:
                tracked.job = await self._submit(request, endpoint)
                bind(job_id=tracked.job.job_id)
                metrics.SUBMITTED.labels(request.route).inc()
                await self.endpoint_answered(route.endpoint_id, True)
                return None
            except (ConnectError, RateLimitedError) as exc:
                history.append(f"{time.time():.3f} {type(exc).__name__}: {exc}")
                error: RunpodError = exc
            except (ServerError, TransportError) as exc:
                history.append(f"{time.time():.3f} {type(exc).__name__}: {exc}")
                await self.endpoint_answered(route.endpoint_id, False)
                if route.delivery == "at_most_once":
                    await self.ledger.count("ambiguous_dead_lettered")
                    return Outcome(
                        FAILED,
                        reason="ambiguous",
                        message=f"submitting may or may not have worked ({exc}); the route "
                        "is at_most_once, so it is not sent again",
                        history=history,
                    )
                await self.ledger.count("ambiguous_resubmits")
                metrics.AMBIGUOUS.labels(request.route).inc()
                error = exc
            except RunpodError as exc:
                history.append(f"{time.time():.3f} {type(exc).__name__}: {exc}")
                return Outcome(FAILED, reason="submit_failed", message=str(exc), history=history)
            if attempt < route.submit_attempts:
                await asyncio.sleep(random.uniform(0, min(30.0, 0.5 * 2**attempt)))
                if tracked.wants_cancel():
                    return Outcome(
                        CANCELLED, reason="cancelled", message="cancelled before submission"
                    )
        return Outcome(
            FAILED,
            reason="submit_failed",
            message=f"submitting failed {route.submit_attempts} times; last error: {error}",
            history=history,
        )

    async def wait_breaker(self, tracked: Tracked) -> bool:
        """Wait while the endpoint's breaker is open; True if a cancel came meanwhile."""
        if self.breakers is None:
            return False
        endpoint_id = self.settings.routes[tracked.request.route].endpoint_id
        while True:
            state = await self.breakers.get(endpoint_id)
            if state.state == "closed" or tracked.wants_cancel():
                break
            if state.state == "half_open" and await self.breakers.try_probe(endpoint_id):
                break  # we are the probe: our outcome closes or reopens the breaker
            pause = state.retry_in(self.breakers.open_s, time.time())
            await asyncio.sleep(min(max(pause, 0.2), 2.0))
        return tracked.wants_cancel()

    async def endpoint_answered(self, endpoint_id: str, ok: bool) -> None:
        """Feed the breaker; a success costs a Redis call only when it changes something."""
        if self.breakers is None:
            return
        try:
            if ok:
                state = await self.breakers.get(endpoint_id)
                if state.state == "closed" and state.failures == 0:
                    return
            await self.breakers.record(endpoint_id, ok)
        except (RedisError, OSError) as exc:  # best effort: never stop a request for it
            log.debug("breaker of %s not updated: %s", endpoint_id, exc)

    async def _submit(self, request: Request, endpoint: AsyncioEndpoint) -> AsyncioJob:
        body = request.body()
        if request.mode == "webhook" and self.webhook_url:
            base = self.webhook_url.rstrip("/")
            body["webhook"] = f"{base}/webhook/{request.id}?token={request.webhook_token}"
        if request.mode == "sync":
            return await endpoint.run_held(body)
        return await endpoint.run(body)
