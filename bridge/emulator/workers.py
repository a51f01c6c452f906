"""Simulated workers and autoscaling, plus the watchdog for external workers.

Each simulated worker is an asyncio task that takes one job at a time, like a RunPod
worker with concurrency 1. The scaler starts workers between ``workersMin`` and
``workersMax`` (``QUEUE_DELAY`` or ``REQUEST_COUNT``), never more than
``account_max_workers`` over all endpoints (the rest show as ``throttled``); an idle
worker stops after ``idleTimeout`` seconds while more than ``workersMin`` run.

A worker loads its handler when it starts, after its cold start, as a RunPod worker
imports its handler module. A handler that cannot load crashes the worker, which starts
again (another cold start); after ``crash_loop_limit`` failed starts in a row it stays
``unhealthy`` and takes no job, so the endpoint's jobs wait ``IN_QUEUE`` until its
template changes. A handler that asks for ``refresh_worker`` gets a fresh worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid

from bridge.emulator.engine import Engine
from bridge.emulator.handlers import Handler, HandlerLoadError, load_handler, run_handler
from bridge.emulator.results import encoded_size
from bridge.emulator.state import IN_PROGRESS, EndpointState, Job, Worker

log = logging.getLogger("bridge.emulator.workers")


def new_worker_id() -> str:
    """Pod-like ids such as ``oqk7ao1uomckye``."""
    return uuid.uuid4().hex[:14]


class Fleet:
    """Runs the simulated workers of every non-external endpoint."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._tick_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # replaced at each change; waiters hold the old one
        engine.on_change.append(self._on_change)

    def _on_change(self, _state: EndpointState) -> None:
        self._wake.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def start(self) -> None:
        self._tick_task = asyncio.create_task(self._run(), name="emulator-scaler")

    async def stop(self) -> None:
        tasks = [w.task for s in self.engine.endpoints.values() for w in s.workers.values()]
        if self._tick_task is not None:
            tasks.append(self._tick_task)
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        tick = self.engine.settings.scale_tick_s
        while True:
            budget = self._account_budget()
            for state in list(self.engine.endpoints.values()):
                try:
                    budget -= self.scale(state, budget)
                except Exception:  # one broken endpoint must not stop scaling the others
                    log.exception("scaling endpoint %s failed", state.id)
            self._reap_external()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick)

    # -- scaling -------------------------------------------------------------------------

    def _account_budget(self) -> float:
        """Workers the account may still start (``account_max_workers``)."""
        cap = self.engine.settings.account_max_workers
        if cap is None:
            return math.inf
        running = sum(
            1 for s in self.engine.endpoints.values() for w in s.workers.values() if not w.external
        )
        return max(cap - running, 0)

    def scale(self, state: EndpointState, budget: float = math.inf) -> int:
        """Start the workers ``state`` wants, at most ``budget``; returns how many started.
        Wanted workers beyond the budget are counted as throttled."""
        if state.id not in self.engine.endpoints or self.engine.is_external(state):
            state.throttled = 0
            return 0
        config = state.config
        sim = [w for w in state.workers.values() if not w.external]
        wanted = max(config.workersMin, self._wanted(state, sim))
        missing = max(min(wanted, config.workersMax) - len(sim), 0)
        started = int(min(missing, budget))
        state.throttled = missing - started
        for _ in range(started):
            self._start_worker(state)
        return started

    def _wanted(self, state: EndpointState, sim: list[Worker]) -> int:
        queued = sum(1 for j in state.queue.values() if not j.policy.low_priority)
        running = sum(1 for w in sim if w.state == "running")
        if state.config.scalerType == "REQUEST_COUNT":
            return math.ceil((queued + running) / state.config.scalerValue)
        # QUEUE_DELAY: one worker as soon as work waits; one more while the oldest
        # job has waited longer than scalerValue seconds and nobody is starting up.
        if not queued:
            return len(sim) if running else 0
        if not sim:
            return 1
        starting = any(w.state == "initializing" for w in sim)
        oldest = next((j for j in state.queue.values() if not j.policy.low_priority), None)
        waited = self.engine.now() - oldest.queued_at if oldest else 0.0
        return len(sim) + (1 if waited > state.config.scalerValue and not starting else 0)

    def _start_worker(self, state: EndpointState) -> None:
        worker = Worker(id=new_worker_id(), external=False, last_seen=self.engine.now())
        state.workers[worker.id] = worker
        worker.task = asyncio.create_task(self._work(state, worker), name=f"worker-{worker.id}")

    # -- one simulated worker ------------------------------------------------------------

    async def _work(self, state: EndpointState, worker: Worker) -> None:
        try:
            while self._keep(state, worker):
                handler = await self._boot(state, worker)
                if handler is None:
                    if worker.state == "unhealthy":  # wait for a new template, then retire
                        await self._sit_unhealthy(state, worker)
                    return
                if not await self._serve(state, worker, handler):
                    return
        finally:
            state.workers.pop(worker.id, None)
            self.engine.changed(state)

    async def _boot(self, state: EndpointState, worker: Worker) -> tuple[str, Handler] | None:
        """Cold start and load the handler, again after each crash; None once the worker
        has crashed ``crash_loop_limit`` times in a row (it is then unhealthy), or when it
        is no longer wanted."""
        settings = self.engine.settings
        while True:
            worker.state = "initializing"
            cold = state.config.coldStartMs
            if cold is None:
                flash = state.config.flashboot
                cold = settings.flashboot_cold_start_ms if flash else settings.cold_start_ms
            if cold:
                await asyncio.sleep(cold / 1000)
            if not self._keep(state, worker):
                return None
            name = self.engine.template_of(state).imageName
            try:
                return name, load_handler(name, self.engine.handlers)
            except HandlerLoadError as exc:
                worker.crashes += 1
                state.counters.worker_crashes += 1
                log.warning("worker %s of %s crashed at start: %s", worker.id, state.id, exc)
                if worker.crashes >= settings.crash_loop_limit:
                    worker.state, worker.error = "unhealthy", str(exc)
                    self.engine.changed(state)
                    return None

    async def _sit_unhealthy(self, state: EndpointState, worker: Worker) -> None:
        """Take no job until the endpoint's handler changes (or the endpoint goes)."""
        name = self.engine.template_of(state).imageName
        while self._keep(state, worker) and self.engine.template_of(state).imageName == name:
            await self._changed.wait()

    async def _serve(
        self, state: EndpointState, worker: Worker, loaded: tuple[str, Handler]
    ) -> bool:
        """Take jobs until the worker retires (False) or must load another handler
        (True: the endpoint's template changed; the worker restarts with it)."""
        worker.state, worker.crashes = "idle", 0
        idle_since = self.engine.now()
        while self._keep(state, worker):
            if self.engine.template_of(state).imageName != loaded[0]:
                return True
            job = self.engine.take(state, worker)
            if job is None:
                idle_for = self.engine.now() - idle_since
                if idle_for >= state.config.idleTimeout and self._may_retire(state):
                    return False
                await state.wait_queue(max(state.config.idleTimeout - idle_for, 0.01))
                continue
            refresh = await self._execute(state, worker, job, loaded[1])
            if refresh:
                return False  # refresh_worker: this worker stops; the scaler starts anew
            worker.state = "idle"
            idle_since = self.engine.now()
        return False

    def _keep(self, state: EndpointState, worker: Worker) -> bool:
        alive = self.engine.endpoints.get(state.id) is state
        sim = sum(1 for w in state.workers.values() if not w.external)
        return alive and sim <= state.config.workersMax and not self.engine.is_external(state)

    def _may_retire(self, state: EndpointState) -> bool:
        sim = sum(1 for w in state.workers.values() if not w.external)
        return sim > state.config.workersMin

    async def _execute(
        self, state: EndpointState, worker: Worker, job: Job, handler: Handler
    ) -> bool:
        """Run one job and report it; True when the handler asked for a fresh worker."""
        engine = self.engine
        payload = {"id": job.id, "input": job.input}
        if job.webhook:
            payload["webhook"] = job.webhook
        if job.s3_config:
            payload["s3Config"] = job.s3_config
        task = asyncio.create_task(
            run_handler(
                handler,
                payload,
                on_chunk=lambda chunk: engine.add_chunk(state, job, chunk),
                on_progress=lambda value: engine.progress(state, job, value),
                worker_id=worker.id,
                aggregate=state.config.returnAggregateStream,
            )
        )
        job.task = task  # the engine cancels it (and clears it) when the job ends early
        try:
            done = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                task.cancel()
                raise  # the server is shutting down
            return False  # the job was cancelled, timed out or deleted: the engine ended it
        finally:
            job.task = None
        if job.status != IN_PROGRESS:
            return False
        verdict = engine.report(state, job, done.body, encoded_size(done.body))
        return verdict.stop_pod

    # -- external workers ----------------------------------------------------------------

    def _reap_external(self) -> None:
        limit = self.engine.settings.worker_dead_after_s
        now = self.engine.now()
        for state in list(self.engine.endpoints.values()):
            for worker in list(state.workers.values()):
                if worker.external and now - worker.last_seen > limit:
                    log.warning("external worker %s on %s stopped responding", worker.id, state.id)
                    self.engine.worker_lost(state, worker)
