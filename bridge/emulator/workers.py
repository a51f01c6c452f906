"""Simulated workers and autoscaling, plus the watchdog for external workers.

Each simulated worker is an asyncio task that takes one job at a time, like a RunPod
worker with concurrency 1. The scaler starts workers between ``workersMin`` and
``workersMax`` (``QUEUE_DELAY`` or ``REQUEST_COUNT``); an idle worker stops after
``idleTimeout`` seconds while more than ``workersMin`` run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid

from bridge.emulator.engine import Engine
from bridge.emulator.handlers import HandlerLoadError, Outcome, load_handler, run_handler
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
        engine.on_change.append(lambda _state: self._wake.set())

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
            for state in list(self.engine.endpoints.values()):
                try:
                    self.scale(state)
                except Exception:  # one broken endpoint must not stop scaling the others
                    log.exception("scaling endpoint %s failed", state.id)
            self._reap_external()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick)

    # -- scaling -------------------------------------------------------------------------

    def scale(self, state: EndpointState) -> None:
        if state.id not in self.engine.endpoints or self.engine.is_external(state):
            return
        config = state.config
        sim = [w for w in state.workers.values() if not w.external]
        wanted = max(config.workersMin, self._wanted(state, sim))
        wanted = min(wanted, config.workersMax)
        for _ in range(wanted - len(sim)):
            self._start_worker(state)

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
        settings = self.engine.settings
        try:
            cold = state.config.coldStartMs
            if cold is None:
                flash = state.config.flashboot
                cold = settings.flashboot_cold_start_ms if flash else settings.cold_start_ms
            if cold:
                await asyncio.sleep(cold / 1000)
            worker.state = "idle"
            idle_since = self.engine.now()
            while self._keep(state, worker):
                job = self.engine.take(state, worker)
                if job is None:
                    idle_for = self.engine.now() - idle_since
                    if idle_for >= state.config.idleTimeout and self._may_retire(state):
                        break
                    await state.wait_queue(max(state.config.idleTimeout - idle_for, 0.01))
                    continue
                await self._execute(state, worker, job)
                worker.state = "idle"
                idle_since = self.engine.now()
        finally:
            state.workers.pop(worker.id, None)
            self.engine.changed(state)

    def _keep(self, state: EndpointState, worker: Worker) -> bool:
        alive = self.engine.endpoints.get(state.id) is state
        sim = sum(1 for w in state.workers.values() if not w.external)
        return alive and sim <= state.config.workersMax and not self.engine.is_external(state)

    def _may_retire(self, state: EndpointState) -> bool:
        sim = sum(1 for w in state.workers.values() if not w.external)
        return sim > state.config.workersMin

    async def _execute(self, state: EndpointState, worker: Worker, job: Job) -> None:
        engine = self.engine
        payload = {"id": job.id, "input": job.input}
        if job.webhook:
            payload["webhook"] = job.webhook
        if job.s3_config:
            payload["s3Config"] = job.s3_config
        try:
            handler = load_handler(engine.template_of(state).imageName, engine.handlers)
        except HandlerLoadError as exc:
            engine.finish(state, job, error=str(exc))
            return
        task = asyncio.create_task(
            run_handler(
                handler,
                payload,
                on_chunk=lambda chunk: engine.add_chunk(state, job, chunk),
                on_progress=lambda value: engine.progress(state, job, value),
                worker_id=worker.id,
            )
        )
        job.task = task  # the engine cancels it (and clears it) when the job ends early
        try:
            outcome: Outcome = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                task.cancel()
                raise  # the server is shutting down
            return  # the job was cancelled, timed out or deleted: the engine ended it
        finally:
            job.task = None
        if job.status != IN_PROGRESS:
            return
        if outcome.streamed and outcome.error is None:
            aggregate = state.config.returnAggregateStream
            outcome = Outcome(output=list(job.chunks) if aggregate else [], has_output=True)
        engine.finish(
            state, job, output=outcome.output, has_output=outcome.has_output, error=outcome.error
        )

    # -- external workers ----------------------------------------------------------------

    def _reap_external(self) -> None:
        limit = self.engine.settings.worker_dead_after_s
        now = self.engine.now()
        for state in list(self.engine.endpoints.values()):
            for worker in list(state.workers.values()):
                if worker.external and now - worker.last_seen > limit:
                    log.warning("external worker %s on %s stopped responding", worker.id, state.id)
                    self.engine.worker_lost(state, worker)
