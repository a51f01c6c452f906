"""The queue engine: jobs through their states, retention, TTL, cancel, purge, retry.

Everything here runs on the server's event loop; nothing blocks it. Workers (simulated
or external) take jobs with :meth:`Engine.take` and report with :meth:`Engine.report`
(judged by the platform's rules in :mod:`bridge.emulator.results`).

A job is deleted (``/status`` 404) when its TTL ends, whatever its state (``policy.ttl``,
else ``default_ttl_ms``, counted from submission; ``/status?ttl=`` sets it anew from that
request), or when its result's retention ends after it reached a final state, whichever
comes first: retention never outlives the TTL. A job whose worker stops answering goes
back to the queue (``retries`` + 1), as RunPod retries it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from bridge.emulator import results
from bridge.emulator.faults import FaultDice, seed_for
from bridge.emulator.settings import (
    EXTERNAL,
    EmulatorSettings,
    EndpointConfig,
    FaultConfig,
    TemplateConfig,
)
from bridge.emulator.state import (
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    TIMED_OUT,
    EndpointState,
    Job,
    Policy,
    Worker,
    new_job_id,
)

log = logging.getLogger("bridge.emulator")


class UnknownEndpoint(LookupError):
    """No endpoint with that id."""


class UnknownJob(LookupError):
    """No job with that id (never existed, expired or deleted)."""


class NotAllowed(ValueError):
    """The request names something the server was not configured to allow."""


class Conflict(ValueError):
    """The operation does not apply to the job in its current state."""


class Engine:
    """All endpoints, templates and jobs of one emulator."""

    def __init__(
        self,
        settings: EmulatorSettings,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.templates: dict[str, TemplateConfig] = {t.id: t for t in settings.templates}
        self.handlers: dict[str, str] = settings.handler_paths()  # fixed for the server's life
        self.endpoints: dict[str, EndpointState] = {}
        self.on_final: list[Callable[[EndpointState, Job], None]] = []
        self.on_take: list[Callable[[EndpointState, Job], None]] = []
        self.on_change: list[Callable[[EndpointState], None]] = []
        for config in settings.endpoints:
            self.add_endpoint(config)

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    # -- endpoints and templates (the admin API uses these) ----------------------------

    def endpoint(self, endpoint_id: str) -> EndpointState:
        try:
            return self.endpoints[endpoint_id]
        except KeyError:
            raise UnknownEndpoint(f"endpoint {endpoint_id!r} not found") from None

    def add_endpoint(self, config: EndpointConfig) -> EndpointState:
        if config.templateId not in self.templates:
            raise UnknownEndpoint(f"template {config.templateId!r} not found")
        # Wall-clock time (not the engine clock): the admin API reports it as createdAt.
        state = EndpointState(config=config, created_at=time.time())
        self._reseed(state)
        self.endpoints[config.id] = state
        self.changed(state)
        return state

    def update_endpoint(self, endpoint_id: str, **changes: Any) -> EndpointState:
        state = self.endpoint(endpoint_id)
        template_id = changes.get("templateId")
        if template_id is not None and template_id not in self.templates:
            raise UnknownEndpoint(f"template {template_id!r} not found")
        # Validate the merged config before installing it: a rejected change must leave
        # the endpoint exactly as it was.
        state.config = EndpointConfig.model_validate({**state.config.model_dump(), **changes})
        if "faults" in changes:
            self._reseed(state)
        self.changed(state)
        return state

    def set_faults(self, endpoint_id: str, faults: FaultConfig) -> EndpointState:
        """Replace an endpoint's injected faults; their sequence starts again from its seed."""
        return self.update_endpoint(endpoint_id, faults=faults)

    def _reseed(self, state: EndpointState) -> None:
        faults = state.config.faults
        state.dice = FaultDice(faults, seed_for(faults, self.settings.fault_seed, state.id))

    def delete_endpoint(self, endpoint_id: str) -> None:
        state = self.endpoint(endpoint_id)
        # Idle simulated workers would otherwise linger until their idle wait ends; busy
        # ones stop by themselves once their cancelled job returns (cancelling them too
        # would interrupt the worker's own clean-up of that job).
        idle = [w.task for w in state.workers.values() if w.task is not None and not w.jobs]
        for job in list(state.jobs.values()):
            if not job.final:
                self._end(state, job, CANCELLED, error="endpoint deleted")
        del self.endpoints[endpoint_id]
        for task in idle:
            task.cancel()
        self.changed(state)

    def save_template(self, template: TemplateConfig) -> TemplateConfig:
        """Add or replace a template; its ``imageName`` must name an allowed handler."""
        if not self.runs(template.imageName):
            raise NotAllowed(
                f"imageName {template.imageName!r} is not a handler this emulator may run: "
                f"choose one of {', '.join([*self.handlers, EXTERNAL])} (the allowed handlers "
                "are fixed at startup: 'handlers' in the emulator's configuration)"
            )
        self.templates[template.id] = template
        return template

    def delete_template(self, template_id: str) -> None:
        """Forget a template no endpoint uses any more."""
        if any(s.config.templateId == template_id for s in self.endpoints.values()):
            raise Conflict(f"template {template_id!r} is still used by an endpoint")
        self.templates.pop(template_id, None)

    def runs(self, image_name: str) -> bool:
        """True when templates may name ``image_name``: an allowed handler or external."""
        return image_name == EXTERNAL or image_name in self.handlers

    def template_of(self, state: EndpointState) -> TemplateConfig:
        return self.templates[state.config.templateId]

    def is_external(self, state: EndpointState) -> bool:
        return self.template_of(state).imageName == EXTERNAL

    def changed(self, state: EndpointState) -> None:
        for callback in self.on_change:
            callback(state)

    # -- the job lifecycle -------------------------------------------------------------

    def submit(
        self,
        endpoint_id: str,
        job_input: Any,
        *,
        sync: bool = False,
        policy: Policy | None = None,
        webhook: str | None = None,
        s3_config: dict[str, Any] | None = None,
    ) -> Job:
        state = self.endpoint(endpoint_id)
        now = self.now()
        job = Job(
            id=new_job_id(sync),
            endpoint_id=endpoint_id,
            input=job_input,
            sync=sync,
            created_at=now,
            policy=policy or Policy(),
            webhook=webhook,
            s3_config=s3_config,
        )
        state.jobs[job.id] = job
        state.enqueue(job, now)
        state.counters.submissions += 1
        state.counters.opened()
        ttl_ms = job.policy.ttl_ms or self.settings.default_ttl_ms
        job.expires_at = now + ttl_ms / 1000
        self._schedule_deletion(state, job)
        self.changed(state)
        return job

    def job(self, endpoint_id: str, job_id: str) -> tuple[EndpointState, Job]:
        state = self.endpoint(endpoint_id)
        job = state.jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"job {job_id!r} not found on endpoint {endpoint_id!r}")
        return state, job

    def take(self, state: EndpointState, worker: Worker) -> Job | None:
        """Hand the oldest queued job to ``worker`` (IN_PROGRESS), or None."""
        job = state.pop_next()
        if job is None:
            return None
        now = self.now()
        job.status = IN_PROGRESS
        job.started_at = now
        job.worker_id = worker.id
        worker.jobs.add(job.id)
        worker.stopped(job.id)  # a stop left over from an earlier run of a retried job
        worker.state = "running"
        timeout_ms = job.policy.execution_timeout_ms or state.config.executionTimeoutMs
        self._schedule(job, timeout_ms / 1000, lambda: self._time_out(state, job))
        job.notify()
        for callback in self.on_take:
            callback(state, job)
        return job

    def progress(self, state: EndpointState, job: Job, value: Any) -> None:
        """A progress update: ignored once the job is final (a late update must not
        resurrect it)."""
        if job.status == IN_PROGRESS:
            job.output = value
            job.notify()

    def add_chunk(self, state: EndpointState, job: Job, chunk: Any) -> None:
        """A streamed chunk; one over ``stream_chunk_max_bytes`` is split, as RunPod does."""
        if job.status == IN_PROGRESS:
            pieces = results.split_chunk(chunk, self.settings.stream_chunk_max_bytes)
            if len(pieces) > 1:
                state.counters.chunks_split += 1
            job.chunks.extend(pieces)
            job.notify()

    def report(self, state: EndpointState, job: Job, body: Any, size: int) -> results.Verdict:
        """A worker's job-done ``body`` (``size`` bytes): a progress update, or the job's
        end as the platform judges it. A report for a job no longer running is ignored."""
        verdict = results.judge(body, size, self.settings.result_max_bytes)
        if verdict.refused is not None:
            state.counters.results_refused += 1
            log.warning("job %s: worker's report refused: %s", job.id, verdict.refused)
        if verdict.status == results.PROGRESS:
            if verdict.refused is None:
                self.progress(state, job, verdict.output)
            return verdict
        if job.status != IN_PROGRESS:
            return verdict
        if verdict.has_output:
            job.output = verdict.output
        else:
            job.clear_output()
        status = FAILED if verdict.status == results.FAILED else COMPLETED
        self._end(state, job, status, error=verdict.error, reported=True)
        return verdict

    def set_ttl(self, state: EndpointState, job: Job, ttl_ms: int) -> None:
        """``/status?ttl=``: the job is deleted ``ttl_ms`` from now (a final job's result
        never outlives its retention)."""
        job.expires_at = self.now() + ttl_ms / 1000
        self._schedule_deletion(state, job)

    def cancel(self, endpoint_id: str, job_id: str) -> Job:
        """Cancel: a queued job never runs; a running one is stopped. A final job is left
        as it is (the caller answers with its current state)."""
        state, job = self.job(endpoint_id, job_id)
        state.counters.cancels += 1
        if not job.final:
            self._end(state, job, CANCELLED)
        return job

    def retry(self, endpoint_id: str, job_id: str) -> Job:
        state, job = self.job(endpoint_id, job_id)
        if job.status not in (FAILED, TIMED_OUT):
            raise Conflict(
                f"job {job_id!r} is {job.status}; only FAILED or TIMED_OUT jobs can be retried"
            )
        self._cancel_timeout(job)
        job.retries += 1
        job.error = None
        job.clear_output()
        job.chunks.clear()
        job.cursor = 0
        job.started_at = job.finished_at = None
        job.worker_id = None
        state.retried += 1
        state.counters.retries += 1
        state.counters.opened()  # final before: open again
        state.enqueue(job, self.now())
        self._schedule_deletion(state, job)  # the TTL again: a retry does not renew it
        job.notify()
        self.changed(state)
        return job

    def purge(self, endpoint_id: str) -> int:
        """Remove every queued job: each ends CANCELLED with ``error: "purged"``."""
        state = self.endpoint(endpoint_id)
        state.counters.purges += 1
        queued = list(state.queue.values())
        for job in queued:
            job.purged = True
            self._end(state, job, CANCELLED, error="purged")
        state.counters.purged_jobs += len(queued)
        return len(queued)

    # -- internals -----------------------------------------------------------------------

    def _time_out(self, state: EndpointState, job: Job) -> None:
        if job.status == IN_PROGRESS:
            self._end(state, job, TIMED_OUT)

    def _end(
        self,
        state: EndpointState,
        job: Job,
        status: str,
        *,
        error: str | None = None,
        reported: bool = False,
    ) -> None:
        """Move ``job`` to a final state; ``reported`` when its worker said it ended
        (otherwise a running job's worker is told to stop it)."""
        was_running = job.status == IN_PROGRESS
        if not job.final:
            state.counters.open_jobs -= 1
        state.queue.pop(job.id, None)
        self._cancel_timeout(job)
        now = self.now()
        job.status = status
        job.finished_at = now if job.started_at is not None else None
        if error is not None:
            job.error = error
        if status == COMPLETED:
            state.completed += 1
        elif status in (FAILED, TIMED_OUT):
            state.failed += 1
        if was_running:
            self._release(state, job, stop=not reported)
        self._schedule_deletion(state, job)
        job.notify()
        for callback in self.on_final:
            callback(state, job)
        self.changed(state)

    def _release(self, state: EndpointState, job: Job, *, stop: bool = True) -> None:
        """Detach a job that stopped running from its worker; stop its handler."""
        worker = state.workers.get(job.worker_id or "")
        if worker is not None:
            worker.jobs.discard(job.id)
            if not worker.jobs:
                worker.state = "idle"
            if worker.external and stop:
                worker.signal_stop(job.id, handed_at=job.started_at or 0.0)
        task, job.task = job.task, None
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()

    def _delete(self, state: EndpointState, job: Job) -> None:
        """Forget the job (retention or TTL over): from now on it is a 404."""
        if job.status == IN_PROGRESS:
            self._release(state, job)
        state.queue.pop(job.id, None)
        self._cancel_timers(job)
        if state.jobs.get(job.id) is job and not job.final:
            state.counters.open_jobs -= 1  # deleted unfinished (its TTL ran out)
        if state.jobs.get(job.id) is job:
            del state.jobs[job.id]
        job.notify()

    def _schedule(self, job: Job, delay: float, callback: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        job.timers.append(loop.call_later(delay, callback))

    def _schedule_deletion(self, state: EndpointState, job: Job) -> None:
        """(Re)arm the job's one deletion timer: at its TTL, or at the end of its result's
        retention once it is final, whichever comes first."""
        when = job.expires_at
        if job.final:
            settings = self.settings
            retention = settings.runsync_retention_s if job.sync else settings.run_retention_s
            when = min(when, self.now() + retention)
        if job.deletion is not None:
            job.deletion.cancel()
        delay = max(when - self.now(), 0.0)
        job.deletion = asyncio.get_running_loop().call_later(
            delay, lambda: self._delete(state, job)
        )

    @staticmethod
    def _cancel_timeout(job: Job) -> None:
        for timer in job.timers:
            timer.cancel()
        job.timers.clear()

    @classmethod
    def _cancel_timers(cls, job: Job) -> None:
        cls._cancel_timeout(job)
        if job.deletion is not None:
            job.deletion.cancel()
            job.deletion = None

    def worker_lost(self, state: EndpointState, worker: Worker) -> None:
        """A worker stopped answering. Its running jobs go back to the queue with one
        more retry, as RunPod retries a job whose worker died; with
        ``requeue_on_worker_loss`` off they end FAILED instead."""
        state.workers.pop(worker.id, None)
        for job_id in list(worker.jobs):
            job = state.jobs.get(job_id)
            if job is None or job.status != IN_PROGRESS:
                continue
            if self.settings.requeue_on_worker_loss:
                self._requeue(state, job)
            else:
                self._end(state, job, FAILED, error=f"worker {worker.id} stopped responding")
        worker.jobs.clear()
        self.changed(state)

    def _requeue(self, state: EndpointState, job: Job) -> None:
        """Put a running job back at the head of the queue (its worker is gone)."""
        self._cancel_timeout(job)
        task, job.task = job.task, None
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        job.retries += 1
        job.clear_output()
        job.started_at = None
        job.worker_id = None
        state.retried += 1
        state.counters.requeued += 1
        state.enqueue(job, self.now())
        state.queue.move_to_end(job.id, last=False)
        job.notify()
