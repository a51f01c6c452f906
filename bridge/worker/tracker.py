"""The tracker: every in-flight job of one worker process, on one asyncio loop.

A request handed to :meth:`Tracker.accept` is recorded in the ledger first, then
submitted once when its route has room, then followed by its mode until it ends, and
its one final reply is delivered. Nothing here blocks a Celery slot: the tasks and the
JSON door only hand requests over.

Modes: ``poll`` (adaptive status checks, held server-side while the route is lightly
loaded), ``stream`` (``/stream``, each chunk forwarded as it comes), ``sync``
(``/runsync?wait=``, then as poll), ``webhook`` (the endpoint calls our receiver, which
wakes the request; a slow poll is the safety net; the result is always read back from
``/status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bridge.errors import (
    JobError,
    JobExpired,
    NotFoundError,
    RequestRejected,
    RunpodError,
    ServerError,
    TransportError,
)
from bridge.logs import bind
from bridge.runpod import AsyncioJob
from bridge.settings import BridgeSettings, RouteConfig
from bridge.worker import metrics
from bridge.worker.breaker import Breakers
from bridge.worker.ledger import Ledger
from bridge.worker.model import (
    CANCELLED,
    EXPIRED,
    REJECTED,
    TIMED_OUT,
    Outcome,
    Request,
)
from bridge.worker.submission import Progress, Submitter
from bridge.worker.tracked import NotOurs, RouteRuntime, Tracked

log = logging.getLogger("bridge.tracker")

Finisher = Callable[[Request, Outcome], Awaitable[None]]


class Tracker:
    """Holds and follows every in-flight request of this process.

    Args:
        settings: the bridge settings (routes).
        ledger: the request ledger.
        session: the one HTTP session all jobs share.
        finish: delivers an outcome after the ledger said this process won the finish.
        progress: records an in-flight state change (Celery door).
        owner: this process' name in the ledger.
        webhook_url: base URL of the webhook receiver (mode ``webhook``).
    """

    def __init__(
        self,
        settings: BridgeSettings,
        ledger: Ledger,
        session: aiohttp.ClientSession,
        *,
        finish: Finisher,
        progress: Progress,
        owner: str,
        webhook_url: str | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.owner = owner
        self.webhook_url = webhook_url
        self.breakers = breakers
        self.submitter = Submitter(
            settings, ledger, owner=owner, progress=progress, breakers=breakers,
            webhook_url=webhook_url,
        )  # fmt: skip
        self._finish = finish
        self._progress = progress
        self.routes = {
            name: RouteRuntime(name, config, session) for name, config in settings.routes.items()
        }
        self.active: dict[str, Tracked] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    # -- entry -------------------------------------------------------------------------

    def backlog(self) -> int:
        """Requests accepted here that still wait for a free slot on their route."""
        return sum(r.waiting for r in self.routes.values())

    async def accept(self, request: Request) -> str:
        """Record and start following ``request``. Returns ``accepted``, ``duplicate``
        (the id is known: nothing is submitted again) or ``cancelled`` (a cancel came
        first: it is answered and never submitted)."""
        if request.route not in self.routes:
            raise RequestRejected(
                f"unknown route {request.route!r} (configured: {', '.join(sorted(self.routes))})",
                "unknown_route",
                request.id,
            )
        if request.mode == "webhook":
            if not self.webhook_url:
                raise RequestRejected(
                    "mode 'webhook' needs the webhook receiver: set BRIDGE_WEBHOOK_URL",
                    "webhook_unavailable",
                    request.id,
                )
            request.webhook_token = request.webhook_token or secrets.token_urlsafe(24)
        task_id = request.continuation.task_id if request.continuation else None
        claim = await self.ledger.claim(
            request.id, request.route, request.to_record(), self.owner, task_id
        )
        door = "celery" if request.continuation else "json"
        metrics.REQUESTS.labels(door, request.route).inc()
        if not claim.new:
            metrics.DEDUP.labels(door).inc()
            return "duplicate"
        tracked = Tracked(request)
        self.active[request.id] = tracked
        self.idle.clear()
        if claim.cancel_requested:
            tracked.cancel_asked = True
        tracked.task = asyncio.create_task(self._run(tracked), name=f"request-{request.id}")
        return "cancelled" if claim.cancel_requested else "accepted"

    async def reject(self, request: Request, reason: str, message: str) -> None:
        """Answer a request we will not submit (its id may be unknown to the ledger)."""
        await self._finish(request, Outcome(REJECTED, reason=reason, message=message))

    def cancel(self, request_id: str) -> bool:
        """A cancel was asked (revoke, CLI, JSON door): stop the job if we hold it."""
        tracked = self.active.get(request_id)
        if tracked is None:
            return False
        tracked.cancel_asked = True
        tracked.wake_up()
        return True

    def wake(self, request_id: str, *, purged: bool = False) -> bool:
        tracked = self.active.get(request_id)
        if tracked is None:
            return False
        tracked.purge_seen = tracked.purge_seen or purged
        tracked.wake_up()
        return True

    def wake_route(self, route: str, *, purged: bool = False) -> int:
        woken = 0
        for tracked in list(self.active.values()):
            if tracked.request.route == route:
                woken += self.wake(tracked.request.id, purged=purged)
        return woken

    async def close(self) -> None:
        tasks = [t.task for t in self.active.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- one request -------------------------------------------------------------------

    async def resume(self, request_id: str, *, own: bool = False) -> bool:
        """Follow a request recorded in the ledger that no live process follows (taken
        over from a dead worker, or after an error here). Returns False if there is
        nothing to do."""
        if request_id in self.active:
            return False
        record = await self.ledger.get(request_id)
        state = record.get("state")
        if state not in ("accepted", "submitting", "submitted") or "request" not in record:
            return False
        created = float(record.get("created") or 0)
        if own and time.time() - created < 30:
            return False  # ours and new: accept() may still be handing it over
        if request_id in self.active:  # it arrived while we read the ledger
            return False
        request = Request.from_record(json.loads(record["request"]))
        if request.route not in self.routes:
            log.warning("request %s names route %s, unknown here", request_id, request.route)
            return False
        tracked = Tracked(request, cancel_asked=record.get("cancel") == "1")
        self.active[request.id] = tracked
        self.idle.clear()
        job_id = record.get("job_id")
        tracked.task = asyncio.create_task(
            self._run(tracked, resume=state, job_id=job_id), name=f"request-{request.id}"
        )
        log.info("resuming request %s (%s, job %s)", request_id, state, job_id)
        return True

    async def _run(
        self, tracked: Tracked, *, resume: str | None = None, job_id: str | None = None
    ) -> None:
        request = tracked.request
        route = self.routes[request.route]
        task_id = request.continuation.task_id if request.continuation else None
        # Every line logged for this request (this asyncio task) carries its ids.
        bind(request_id=request.id, task_id=task_id, route=request.route, job_id=job_id)
        try:
            route.waiting += 1
            try:
                await route.slots.acquire()
            finally:
                route.waiting -= 1
            route.in_flight += 1
            metrics.IN_FLIGHT.labels(route.name).inc()
            try:
                await self._run_with_retries(tracked, route, resume, job_id)
            finally:
                route.in_flight -= 1
                metrics.IN_FLIGHT.labels(route.name).dec()
                route.slots.release()
        finally:
            self.active.pop(request.id, None)
            if not self.active:
                self.idle.set()

    async def _run_with_retries(
        self, tracked: Tracked, route: RouteRuntime, resume: str | None, job_id: str | None
    ) -> None:
        """Follow and finish; after an unexpected error (Redis away, a bug), wait and
        resume from what the ledger recorded, so an accepted request is never dropped."""
        request = tracked.request
        failures = 0
        while True:
            try:
                outcome = await self._follow(tracked, route, resume, job_id)
                if outcome is not None:
                    await self._finish(request, outcome)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, ServerError | TransportError):
                    await self.submitter.endpoint_answered(route.config.endpoint_id, False)
                failures += 1
                log.warning("request %s: %s: %s; resuming from the ledger", request.id,
                            type(exc).__name__, exc)  # fmt: skip
                # Never go on from what we knew before the error: the ledger may have
                # moved (the error may have hit after a step was recorded).
                record, failures = await self._ledger_record(request.id, failures)
                resume, job_id = record.get("state"), record.get("job_id")
                if resume not in ("accepted", "submitting", "submitted"):
                    return  # final (finished elsewhere) or gone

    async def _ledger_record(self, request_id: str, failures: int) -> tuple[dict[str, str], int]:
        """The request's ledger record, waiting (with back-off) until Redis answers."""
        while True:
            await asyncio.sleep(min(30.0, 0.25 * 2**failures))
            try:
                return await self.ledger.get(request_id), failures
            except Exception:  # still unreachable: wait longer
                failures += 1
                log.debug("ledger still unreachable for %s", request_id, exc_info=True)

    async def _follow(
        self,
        tracked: Tracked,
        route: RouteRuntime,
        resume: str | None = None,
        job_id: str | None = None,
    ) -> Outcome | None:
        request = tracked.request
        endpoint = route.endpoint_for(request.mode)
        if resume == "submitted" and job_id:
            tracked.job = endpoint.job(job_id)
            bind(job_id=job_id)
        else:
            try:
                outcome = await self.submitter.submit_once(tracked, endpoint, resume)
            except NotOurs:
                return None
            if outcome is not None:
                return outcome
        job = tracked.job
        assert job is not None
        deadline = request.accepted_at + request.deadline_s if request.deadline_s else None
        observer = None
        if request.continuation is not None:  # its Celery state is visible: keep it true
            observer = asyncio.create_task(self._observe_start(tracked))
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.time())
            async with asyncio.timeout(remaining):
                return await self._until_final(tracked, route)
        except TimeoutError:
            await self._cancel_quietly(job)
            return Outcome(
                TIMED_OUT,
                reason="deadline",
                message=f"no result within the request's deadline of {request.deadline_s} s",
                job_id=job.job_id,
            )
        finally:
            if observer is not None:
                observer.cancel()

    async def _observe_start(self, tracked: Tracked) -> None:
        """Notice when a queued job starts running (a held wait only reports its end):
        checks at 0.1 s, 0.2 s, 0.4 s … (at most 5 s apart) until it runs."""
        pause = 0.1
        while tracked.last_state != "IN_PROGRESS":
            await asyncio.sleep(pause)
            if await self._look(tracked) is not None:
                return
            pause = min(pause * 2, 5.0)

    async def _until_final(self, tracked: Tracked, route: RouteRuntime) -> Outcome:
        job = tracked.job
        assert job is not None
        while True:
            if tracked.wants_cancel():
                return await self._cancel(tracked)
            woken = tracked.arm()
            watcher = asyncio.create_task(self._watch(tracked))
            try:
                either: set[asyncio.Future[Any]] = {watcher, woken}
                done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when we are cancelled: leave no task behind
                woken.cancel()
                if not watcher.done():
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
            if watcher in done:
                return watcher.result()
            if tracked.wants_cancel():
                return await self._cancel(tracked)
            outcome = await self._look(tracked)  # woken by a webhook or a purge
            if outcome is not None:
                return outcome
            tracked.purge_seen = False  # the purge did not touch this job

    async def _watch(self, tracked: Tracked) -> Outcome:
        """Follow the job by its mode until it is final."""
        job, request = tracked.job, tracked.request
        assert job is not None
        if request.mode == "stream":
            async for chunk in job.stream():
                if request.reply_to:
                    await self.ledger.push_chunk(
                        request.id, request.reply_to, chunk, self._route(request).reply_ttl_s
                    )
            return await self._look_final(tracked)
        try:
            await job.output()
        except JobExpired:
            return self._expired(tracked)
        except JobError as exc:
            return Outcome.from_job({**exc.job, "id": job.job_id})
        final = job.final_status  # read by output(): no need to ask again
        return Outcome.from_job(final) if final else await self._look_final(tracked)

    async def _look_final(self, tracked: Tracked) -> Outcome:
        outcome = await self._look(tracked)
        while outcome is None:  # a stream can end before /status says so
            await asyncio.sleep(0.01)
            outcome = await self._look(tracked)
        return outcome

    async def _look(self, tracked: Tracked) -> Outcome | None:
        """Read ``/status`` once: an outcome if the job is final, else None."""
        job = tracked.job
        assert job is not None
        try:
            status = await job.status()
        except (JobExpired, NotFoundError):
            return self._expired(tracked)
        state = str(status.get("status"))
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
            reason = "purged" if tracked.purge_seen and state == CANCELLED else None
            return Outcome.from_job(status, reason=reason)
        if state != tracked.last_state:
            tracked.last_state = state
            meta = {"job_id": job.job_id, "route": tracked.request.route}
            await self._progress(tracked.request, state, meta)
        return None

    def _expired(self, tracked: Tracked) -> Outcome:
        job_id = tracked.job.job_id if tracked.job else None
        if tracked.purge_seen:
            return Outcome(CANCELLED, reason="purged", message="the endpoint queue was purged",
                           job_id=job_id)  # fmt: skip
        return Outcome(EXPIRED, reason="result_expired",
                       message="the endpoint no longer knows the job", job_id=job_id)  # fmt: skip

    async def _cancel(self, tracked: Tracked) -> Outcome:
        job = tracked.job
        assert job is not None
        metrics.CANCELLATIONS.labels(tracked.request.route).inc()
        try:
            await job.cancel()
        except (JobExpired, NotFoundError):
            return self._expired(tracked)
        outcome = await self._look(tracked)
        if outcome is None:  # the endpoint has not stopped it yet: say what we asked
            return Outcome(CANCELLED, reason="cancelled", job_id=job.job_id)
        if outcome.status == CANCELLED and outcome.reason is None:
            outcome.reason = "cancelled"
        return outcome

    async def _cancel_quietly(self, job: AsyncioJob) -> None:
        try:
            await job.cancel()
        except RunpodError as exc:
            log.warning("cancelling job %s after its deadline failed: %s", job.job_id, exc)

    def _route(self, request: Request) -> RouteConfig:
        return self.routes[request.route].config
