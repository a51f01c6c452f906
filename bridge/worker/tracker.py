"""The tracker: every in-flight request of one worker process, on one asyncio loop.

Each request runs its lifecycle (:mod:`bridge.core.lifecycle`, which decides everything)
and the tracker performs the effects the lifecycle asks for: ledger steps, the endpoint
calls, waits, delivery. Nothing here blocks a Celery slot: the tasks and the JSON door
only hand requests over.

Modes: ``poll`` (adaptive status checks, held server-side while the route is lightly
loaded), ``stream`` (``/stream``, each chunk forwarded as it comes), ``sync``
(``/runsync?wait=``, then as poll), ``webhook`` (the endpoint calls our receiver, which
wakes the request; a slow poll is the safety net; the result is always read back from
``/status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from redis.exceptions import RedisError

from bridge.core import lifecycle as lc
from bridge.core import metrics
from bridge.core.breaker import CLOSED, HALF_OPEN, Breakers
from bridge.core.ledger import ClaimKind, Grant, Ledger
from bridge.core.model import CANCELLED, JOB_FINAL_STATES, Admitted, Outcome, Request
from bridge.egress.delivery import Egress
from bridge.errors import JobError
from bridge.logs import bind
from bridge.runpod import AsyncioEndpoint, AsyncioJob, Hooks, PollPolicy
from bridge.settings import BridgeSettings, RouteConfig

log = logging.getLogger("bridge.tracker")

SLOT_POLL_S = 0.5
"""The longest a request waiting for a fleet-wide slot goes without asking again (a slot
another process frees is not announced)."""


@dataclass(eq=False)
class Tracked:
    """One request this process is following."""

    request: Request
    signals: lc.Signals = field(default_factory=lc.Signals)
    job_id: str | None = None
    job: AsyncioJob | None = None
    token: str = ""
    finisher: str = field(default_factory=lambda: uuid.uuid4().hex)
    published: set[str] = field(default_factory=set)
    last_state: str | None = None
    task: asyncio.Task[None] | None = None
    submitting: bool = False
    """A POST of /run is under way or its job id not yet recorded: a graceful stop
    waits for this to end rather than leave an ambiguous submit behind."""
    early: asyncio.Future[Outcome] | None = None
    """The job's first watch, started as soon as ``/run`` answered, while the job id is
    being recorded: the first :class:`~bridge.core.lifecycle.Follow` takes it over."""
    _waiter: asyncio.Future[None] | None = None

    def wake_up(self) -> None:
        """Interrupt the current wait (a cancel, a webhook, a purge)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def arm(self) -> asyncio.Future[None]:
        """A fresh future for :meth:`wake_up` to resolve (a future, not a task per
        request: 10,000 jobs in flight should not cost 10,000 more tasks)."""
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter


class RouteRuntime:
    """A route's endpoint clients, its rules and its in-flight cap."""

    def __init__(
        self,
        name: str,
        config: RouteConfig,
        session: aiohttp.ClientSession,
        hooks: Hooks,
        rules: lc.Rules,
    ) -> None:
        self.name = name
        self.config = config
        self.rules = rules
        key = config.api_key().get_secret_value()
        common: dict[str, Any] = {"api_key": key, "base_url": config.base_url, "hooks": hooks}
        self.held = AsyncioEndpoint(config.endpoint_id, session, **common)
        self.plain = AsyncioEndpoint(
            config.endpoint_id, session, poll=PollPolicy(long_poll=False, cap=5.0), **common
        )
        self.safety = AsyncioEndpoint(
            config.endpoint_id,
            session,
            poll=PollPolicy(long_poll=False, first=config.webhook_safety_poll_s, factor=1.0,
                            cap=config.webhook_safety_poll_s),
            **common,
        )  # fmt: skip
        # Purges take their budget slot themselves, without waiting (see Periodic).
        unbudgeted = {**common, "hooks": Hooks(after=hooks.after)}
        self.purger = AsyncioEndpoint(config.endpoint_id, session, **unbudgeted)
        self.slots = asyncio.Semaphore(config.max_in_flight)
        self.in_flight = 0
        self.waiting = 0
        self.granting = 0
        """Claims under way that take their first grant (see Tracker.accept)."""
        self.slot_waiters: dict[str, Tracked] = {}
        """Requests of this process waiting for one of the route's fleet-wide slots, the
        longest waiting first."""

    def slot_freed(self) -> None:
        """This process freed one of the route's fleet-wide slots: wake the longest
        waiter (the others keep polling, as for a slot another process frees)."""
        if self.slot_waiters:
            first = next(iter(self.slot_waiters))
            self.slot_waiters.pop(first).wake_up()

    def endpoint_for(self, mode: str) -> AsyncioEndpoint:
        if mode == "webhook":
            return self.safety
        return self.held if self.in_flight < self.config.long_poll_below else self.plain


def rules_for(settings: BridgeSettings, route: RouteConfig) -> lc.Rules:
    """A route's lifecycle bounds, from its settings."""
    return lc.Rules(
        delivery=route.delivery,
        submit_attempts=route.submit_attempts,
        internal_attempts=settings.internal_attempts,
        give_up_s=route.give_up_s,
        breaker_wait_s=route.breaker_wait_s,
    )


class Tracker:
    """Holds every in-flight request of this process and performs their effects.

    Args:
        settings: the bridge settings (routes).
        ledger: the request ledger.
        egress: where replies, chunks, dead letters and Celery results go.
        breakers: the endpoints' circuit breakers.
        routes: each route's clients and rules.
        owner: this process' name in the ledger.
        webhook_url: base URL of the webhook receiver (mode ``webhook``).
    """

    def __init__(
        self,
        settings: BridgeSettings,
        ledger: Ledger,
        egress: Egress,
        breakers: Breakers,
        routes: dict[str, RouteRuntime],
        *,
        owner: str,
        webhook_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.egress = egress
        self.breakers = breakers
        self.routes = routes
        self.owner = owner
        self.webhook_url = webhook_url
        self.active: dict[str, Tracked] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopping = False
        """Set by :meth:`close`: no new submission starts; the ledger keeps them for the
        process that takes over."""

    # -- entry -------------------------------------------------------------------------

    def backlog(self) -> int:
        """Requests accepted here that still wait for a free slot on their route."""
        return sum(r.waiting for r in self.routes.values())

    def in_flight(self) -> int:
        return len(self.active)

    async def accept(self, request: Request) -> Admitted:
        """Record ``request`` and start following it (it has passed admission)."""
        route = self.routes[request.route]
        if await self.breaker_wait(route.config.endpoint_id) > 0:
            return Admitted.DEFERRED
        token = secrets.token_urlsafe(24) if request.mode == "webhook" else ""
        # A free slot: take the first submission's grant with the claim (one script).
        # Claims run together (the JSON door's batch): count the grants under way; the
        # fleet-wide slot is taken (or refused) by the claim's script itself.
        cap = route.config.max_in_flight
        free = route.in_flight + route.waiting + route.granting < cap
        route.granting += free
        try:
            claim = await self.ledger.claim(request, self.owner, token=token, grant=free, cap=cap)
        finally:
            route.granting -= free
        metrics.child(metrics.REQUESTS, request.door, request.route).inc()
        if claim.kind is ClaimKind.SAME:
            metrics.DEDUP.labels(request.door).inc()
            return Admitted.DUPLICATE
        if claim.kind is ClaimKind.CONFLICT:
            same_list = bool(request.reply_to) and claim.reply_to == request.reply_to
            return Admitted.CONFLICT_UNANSWERED if same_list else Admitted.CONFLICT
        tracked = Tracked(request, token=token)
        tracked.signals.cancel = claim.cancel_requested
        granted = claim.state == lc.Phase.SUBMITTING
        start = lc.Start(
            self.owner,
            lc.Phase.SUBMITTING if granted else lc.Phase.ACCEPTED,
            granted=granted,
            deadline=_deadline(request),
        )
        self._start(tracked, start)
        return Admitted.CANCELLED if claim.cancel_requested else Admitted.ACCEPTED

    async def resume(self, request_id: str, *, own: bool = False) -> bool:
        """Follow a request recorded in the ledger that no live process follows (taken
        over from a dead worker, or one this process lost track of). False if there is
        nothing to do."""
        if request_id in self.active:
            return False
        record = await self.ledger.get(request_id)
        if record.state not in (lc.Phase.ACCEPTED, lc.Phase.SUBMITTING, lc.Phase.SUBMITTED):
            return False
        if own and time.time() - record.created < 30:
            return False  # ours and new: accept() may still be handing it over
        if request_id in self.active:  # it arrived while we read the ledger
            return False
        try:
            request = record.to_request()
        except (ValueError, TypeError) as exc:
            log.error("request %s: its ledger record cannot be read (%s)", request_id, exc)
            return False
        if request.route not in self.routes:
            log.warning("request %s names route %s, unknown here", request_id, request.route)
            return False
        tracked = Tracked(request, token=record.token)
        tracked.signals.cancel = record.cancel
        tracked.job_id = record.job_id
        start = lc.Start(
            self.owner,
            lc.Phase(record.state),
            job_id=record.job_id,
            submissions=record.submissions,
            deadline=_deadline(request),
        )
        self._start(tracked, start)
        log.info("resuming request %s (%s, job %s)", request_id, record.state, record.job_id)
        return True

    def _start(self, tracked: Tracked, start: lc.Start) -> None:
        self.active[tracked.request.id] = tracked
        self.routes[tracked.request.route].waiting += 1  # until _run has its slot
        self.idle.clear()
        tracked.task = asyncio.create_task(
            self._run(tracked, start), name=f"request-{tracked.request.id}"
        )

    def cancel(self, request_id: str) -> bool:
        """A cancel was asked (revoke, CLI, JSON door): stop the job if we hold it."""
        tracked = self.active.get(request_id)
        if tracked is None:
            return False
        tracked.signals.cancel = True
        tracked.wake_up()
        return True

    def wake(self, request_id: str) -> bool:
        """A webhook said the job changed: look at it now."""
        tracked = self.active.get(request_id)
        if tracked is None:
            return False
        tracked.wake_up()
        return True

    def purged(self, route: str) -> int:
        """The route's endpoint queue was purged: every request of it looks at its job."""
        woken = 0
        for tracked in list(self.active.values()):
            if tracked.request.route == route:
                tracked.signals.purged = True
                tracked.wake_up()
                woken += 1
        return woken

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop following: no new submission starts, submissions under way get up to
        ``grace_s`` to be sent and recorded (so nothing is left ambiguous), then every
        request is dropped here; the ledger keeps it for the process that takes over."""
        self.stopping = True
        deadline = asyncio.get_running_loop().time() + grace_s
        while any(t.submitting for t in self.active.values()):
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("stopping with a submission still under way")
                break
            await asyncio.sleep(0.05)
        tasks = [t.task for t in self.active.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def breaker_wait(self, endpoint_id: str) -> float:
        """Seconds until the endpoint's breaker lets work through (0: it does now; in
        half-open, the first to ask becomes the probe)."""
        state = await self.breakers.get(endpoint_id)
        if state.state == CLOSED:
            return 0.0
        if state.state == HALF_OPEN:
            return 0.0 if await self.breakers.try_probe(endpoint_id) else 1.0
        return max(state.retry_in(self.breakers.open_s, time.time()), 0.2)

    # -- one request -------------------------------------------------------------------

    async def _run(self, tracked: Tracked, start: lc.Start) -> None:
        request = tracked.request
        route = self.routes[request.route]
        # Every line logged for this request (this asyncio task) carries its ids.
        bind(request_id=request.id, task_id=request.task_id, route=request.route,
             job_id=start.job_id)  # fmt: skip
        try:
            try:
                await route.slots.acquire()
            finally:
                route.waiting -= 1
            route.in_flight += 1
            metrics.child(metrics.IN_FLIGHT, route.name).inc()
            try:
                flow = lc.lifecycle(start, route.rules, tracked.signals)
                await self._drive(tracked, route, flow)
            finally:
                route.in_flight -= 1
                metrics.child(metrics.IN_FLIGHT, route.name).dec()
                route.slots.release()
                route.slot_freed()  # final (or handed on): its fleet-wide slot is free
        except asyncio.CancelledError:
            raise
        except Exception:  # delivery failed past every bound: the ledger keeps it
            log.exception("request %s could not be delivered; recovery will retry it",
                          request.id)  # fmt: skip
        finally:
            early, tracked.early = tracked.early, None
            if early is not None:  # never followed (not ours after all, or stopping)
                early.cancel()
                early.add_done_callback(_quietly)
            self.active.pop(request.id, None)
            if not self.active:
                self.idle.set()

    async def _drive(self, tracked: Tracked, route: RouteRuntime, flow: lc.Lifecycle) -> None:
        """Perform the lifecycle's effects until it returns (the sans-IO driver)."""
        reply: Any = None
        error: Exception | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration:
                return
            reply, error = None, None
            try:
                reply = await self._perform(tracked, route, effect)
            except Exception as exc:  # thrown into the lifecycle, which classifies it
                error = exc

    async def _perform(self, tracked: Tracked, route: RouteRuntime, effect: lc.Effect) -> Any:
        request = tracked.request
        match effect:
            case lc.Follow(timeout):
                return await self._follow(tracked, route, timeout)
            case lc.Sleep(seconds):
                woken = tracked.arm()  # a cancel cuts a back-off short
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, seconds)
                return None
            case lc.BreakerWait():
                return await self.breaker_wait(route.config.endpoint_id)
            case lc.MarkSubmitting():
                return await self._mark_submitting(tracked, route)
            case lc.Submit():
                if self.stopping:  # hand it back unsent: the next owner submits it
                    await self.ledger.reopen(request.id, request.route)
                    route.slot_freed()
                    await self.ledger.count_submission(request.id, -1)
                    await self._unless_stopping(tracked)
                tracked.submitting = True
                try:
                    job_id = await self._submit(tracked, route)
                except BaseException:
                    tracked.submitting = False
                    raise
                self._watch_early(tracked, route)
                return job_id
            case lc.MarkSubmitted(job_id):
                tracked.job_id = job_id
                try:
                    return await self.ledger.mark_submitted(request.id, job_id)
                finally:
                    tracked.submitting = False
            case lc.Look():
                return await self._look(tracked, route)
            case lc.CancelJob():
                metrics.CANCELLATIONS.labels(request.route).inc()
                await self._job(tracked, route).cancel()
                return await self._look(tracked, route)
            case lc.Finalize(outcome):
                return await self.egress.finalize(request, outcome, tracked.finisher)
            case lc.Publish(outcome):
                return await self.egress.publish(
                    request, outcome, tracked.finisher, tracked.published
                )
            case lc.Reload():
                return await self.ledger.get(request.id)
            case lc.Reopen():
                reopened = await self.ledger.reopen(request.id, request.route)
                route.slot_freed()
                return reopened
            case lc.CountSubmission(delta):
                return await self.ledger.count_submission(request.id, delta)
            case lc.CountAmbiguous(cause):
                metrics.AMBIGUOUS.labels(request.route, cause).inc()
                log.warning("request %s: sending again, the job may run twice (%s)",
                            request.id, cause)  # fmt: skip
                await _best_effort(self.ledger.count(f"ambiguous:{cause}"))
                return None
            case lc.EndpointAnswered(ok):
                await _best_effort(self._endpoint_answered(route.config.endpoint_id, ok))
                return None
            case lc.Progress(state):
                meta = {"job_id": tracked.job_id, "route": request.route}
                await _best_effort(self.egress.progress(request, state, meta))
                return None
        raise TypeError(f"unknown effect {effect!r}")  # pragma: no cover

    async def _submit(self, tracked: Tracked, route: RouteRuntime) -> str:
        request = tracked.request
        endpoint = route.endpoint_for(request.mode)
        body = request.body()
        if request.mode == "webhook" and self.webhook_url:
            base = self.webhook_url.rstrip("/")
            body["webhook"] = f"{base}/webhook/{request.id}?token={tracked.token}"
        if request.mode == "sync":
            job = await endpoint.run_held(body)
        else:
            job = await endpoint.run(body)
        tracked.job, tracked.job_id = job, job.job_id
        bind(job_id=job.job_id)
        metrics.child(metrics.SUBMITTED, request.route).inc()
        return job.job_id

    async def _mark_submitting(self, tracked: Tracked, route: RouteRuntime) -> Grant:
        """Take the right to submit and one of the route's fleet-wide slots, waiting while
        every slot is taken: woken when this process frees one, else asking again after
        a back-off of at most ``SLOT_POLL_S`` (another process freed it). A cancel while
        waiting answers the :attr:`Grant.no_slot` grant: the request ends unsent."""
        request = tracked.request
        pause = SLOT_POLL_S / 8
        try:
            while True:
                await self._unless_stopping(tracked)
                grant = await self.ledger.mark_submitting(
                    request.id, self.owner, route=request.route, cap=route.config.max_in_flight
                )
                if not grant.no_slot or grant.cancel_requested or tracked.signals.cancel_asked():
                    return grant
                woken = tracked.arm()
                route.slot_waiters.setdefault(request.id, tracked)  # keeps its place
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, pause)
                pause = min(pause * 2, SLOT_POLL_S)
        finally:
            route.slot_waiters.pop(request.id, None)

    async def _unless_stopping(self, tracked: Tracked) -> None:
        """While the process stops, wait here (until cancelled) instead of starting."""
        if self.stopping:
            await asyncio.Event().wait()

    def _job(self, tracked: Tracked, route: RouteRuntime) -> AsyncioJob:
        if tracked.job is None:
            if tracked.job_id is None:  # pragma: no cover - the lifecycle forbids it
                raise RuntimeError("no job to follow")
            tracked.job = route.endpoint_for(tracked.request.mode).job(tracked.job_id)
            bind(job_id=tracked.job_id)
        return tracked.job

    async def _endpoint_answered(self, endpoint_id: str, ok: bool) -> None:
        """Feed the breaker; a success costs a Redis call only when it changes something."""
        if ok:
            state = await self.breakers.get(endpoint_id)
            if state.state == CLOSED and state.failures == 0:
                return
        await self.breakers.record(endpoint_id, ok)

    # -- following ---------------------------------------------------------------------

    async def _follow(
        self, tracked: Tracked, route: RouteRuntime, timeout: float | None
    ) -> Outcome | lc.Interrupt:
        """Follow the job by its mode until it is final, a wake-up, or ``timeout``."""
        woken = tracked.arm()
        watcher, tracked.early = tracked.early, None
        if watcher is None:
            watcher = asyncio.ensure_future(self._watch(tracked, route, self._job(tracked, route)))
        observer = None
        if tracked.request.continuation is not None:  # its Celery state is visible
            observer = asyncio.ensure_future(self._observe_start(tracked, route))
        try:
            either: set[asyncio.Future[Any]] = {watcher, woken}
            done, _ = await asyncio.wait(either, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:  # also when we are cancelled: leave no task behind
            woken.cancel()
            for task in (watcher, observer):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if watcher in done:
            result: Outcome = watcher.result()
            return result
        return lc.Interrupt.WOKEN if woken in done else lc.Interrupt.DEADLINE

    def _watch_early(self, tracked: Tracked, route: RouteRuntime) -> None:
        """Start watching a job the moment ``/run`` answers, so that recording its id
        (and the Celery door's in-flight state) overlaps the first status read instead
        of coming before it: a round trip or two less between a short job's end and its
        reply. Not for streams (no chunk before the job id is recorded)."""
        if tracked.request.mode != "stream" and tracked.job is not None:
            tracked.early = asyncio.ensure_future(self._watch(tracked, route, tracked.job))

    async def _watch(self, tracked: Tracked, route: RouteRuntime, job: AsyncioJob) -> Outcome:
        """Follow the job by its mode until it is final."""
        request = tracked.request
        if request.mode == "stream":
            async for chunk in job.stream():
                await self.egress.chunk(request, chunk)
        try:
            await job.output()
        except JobError as exc:
            if exc.status not in JOB_FINAL_STATES:
                raise  # expired: the lifecycle decides
            return Outcome.from_job({**exc.job, "id": job.job_id})
        final = job.final_status  # read by output(): no need to ask again
        return self._outcome(tracked, final) if final else await self._final_look(tracked, route)

    async def _final_look(self, tracked: Tracked, route: RouteRuntime) -> Outcome:
        outcome = await self._look(tracked, route)
        if outcome is None:  # pragma: no cover - output() returned, so it is final
            raise RuntimeError("the job is not final after its output was read")
        return outcome

    async def _observe_start(self, tracked: Tracked, route: RouteRuntime) -> None:
        """Notice when a queued job starts running (a held wait only reports its end):
        checks at 0.1 s, 0.2 s, 0.4 s … (at most 5 s apart) until it runs."""
        pause = 0.1
        while tracked.last_state != "IN_PROGRESS":
            await asyncio.sleep(pause)
            if await self._look(tracked, route) is not None:
                return
            pause = min(pause * 2, 5.0)

    async def _look(self, tracked: Tracked, route: RouteRuntime) -> Outcome | None:
        """Read ``/status`` once: an outcome if the job is final, else None."""
        status = await self._job(tracked, route).status()
        if str(status.get("status")) in JOB_FINAL_STATES:
            return self._outcome(tracked, status)
        state = str(status.get("status"))
        if state != tracked.last_state:
            tracked.last_state = state
            meta = {"job_id": tracked.job_id, "route": tracked.request.route}
            await _best_effort(self.egress.progress(tracked.request, state, meta))
        return None

    @staticmethod
    def _outcome(tracked: Tracked, status: dict[str, Any]) -> Outcome:
        purged = tracked.signals.purged and status.get("status") == CANCELLED
        return Outcome.from_job(status, reason=lc.PURGED if purged else None)


def _quietly(task: asyncio.Future[Any]) -> None:
    """Done-callback of a task nobody awaits: its error (if any) is of no use now."""
    if not task.cancelled():
        task.exception()


def _deadline(request: Request) -> float | None:
    return request.accepted_at + request.deadline_s if request.deadline_s else None


async def _best_effort(step: Any) -> None:
    """Await a step that must never stop a request (breaker, counters, progress)."""
    try:
        await step
    except (RedisError, OSError) as exc:
        log.debug("best-effort step failed: %s", exc)
    except Exception:  # a progress note must not end the request
        log.warning("best-effort step failed", exc_info=True)
