"""The emulator's in-memory state: jobs, workers and endpoints, and their wire shapes."""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bridge.emulator.faults import KINDS, FaultDice
from bridge.emulator.settings import EndpointConfig

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
FINAL_STATES = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})

_MISSING: Any = object()


def new_job_id(sync: bool) -> str:
    """Ids as the platform makes them: ``<uuid>-u1`` for /run, ``sync-<uuid>-e1``."""
    return f"sync-{uuid.uuid4()}-e1" if sync else f"{uuid.uuid4()}-u1"


@dataclass(frozen=True)
class Policy:
    """A job's ``policy``, in milliseconds; ``None`` means the endpoint's default."""

    execution_timeout_ms: int | None = None
    low_priority: bool = False
    ttl_ms: int | None = None


@dataclass(eq=False)
class Job:
    """One job and everything the API reports about it."""

    id: str
    endpoint_id: str
    input: Any
    sync: bool
    created_at: float
    policy: Policy = field(default_factory=Policy)
    webhook: str | None = None
    s3_config: dict[str, Any] | None = None
    status: str = IN_QUEUE
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    output: Any = _MISSING
    error: str | None = None
    retries: int = 0
    purged: bool = False
    chunks: list[Any] = field(default_factory=list)
    cursor: int = 0
    expires_at: float = float("inf")  # engine clock: the TTL deletes the job then
    task: asyncio.Task[Any] | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)  # execution timeout
    deletion: asyncio.TimerHandle | None = None  # TTL or retention, whichever is first
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    def has_output(self) -> bool:
        return self.output is not _MISSING

    def clear_output(self) -> None:
        self.output = _MISSING

    def to_status(self, now: float) -> dict[str, Any]:
        """The ``/status`` object, with fields in the order the platform shows them."""
        body: dict[str, Any] = {}
        if self.started_at is not None:
            body["delayTime"] = _ms(self.started_at - self.queued_at)
            end = self.finished_at if self.finished_at is not None else now
            body["executionTime"] = _ms(end - self.started_at)
        if self.error is not None:
            body["error"] = self.error
        body["id"] = self.id
        if self.has_output():
            body["output"] = self.output
        if self.retries:
            body["retries"] = self.retries
        body["status"] = self.status
        if self.worker_id is not None:
            body["workerId"] = self.worker_id
        return body

    def webhook_payload(self, now: float) -> dict[str, Any]:
        """What the platform POSTs to ``webhook``: the status fields (not ``workerId`` nor
        ``retries``) plus the request's ``input`` and ``webhook``, keys in the order of
        the platform's sample (runpod-python issue #409)."""
        body = {k: v for k, v in self.to_status(now).items() if k not in ("workerId", "retries")}
        body |= {"input": self.input, "webhook": self.webhook}
        return dict(sorted(body.items()))

    def take_chunks(self) -> list[dict[str, Any]]:
        """Chunks not yet delivered through ``/stream``; each is delivered once."""
        fresh = self.chunks[self.cursor :]
        self.cursor = len(self.chunks)
        return [{"output": c} for c in fresh]

    # -- change notification for long-polls (/runsync, /status-sync, /stream?wait=) --

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_change(self, timeout: float) -> None:
        """Return when the job changes or ``timeout`` seconds pass, whichever is first."""
        if timeout <= 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)


@dataclass
class PendingStop:
    """A stop signal for a job its (external) worker may still be running."""

    handed_at: float  # when the job was handed to the worker (engine clock)
    delivered: bool = False  # sent on job-stop at least once
    listed: bool = False  # seen in one of the worker's pings


@dataclass(eq=False)
class Worker:
    """A worker, simulated in-process or external (a real worker process polling us).

    An external worker's stop signals stay pending until the worker shows it no longer
    holds the job (runpod 1.12 ignores a stop for a job it has taken but not yet started,
    so a signal sent once can be lost): it reports the job done, a ping stops listing it,
    or it asks for work while holding nothing. Pending stops are sent on every job-stop
    poll; a poll with nothing new is held ``redeliver_s`` before it repeats them, so the
    worker does not spin.
    """

    id: str
    external: bool
    state: str = "initializing"  # initializing | idle | running | throttled | unhealthy
    last_seen: float = 0.0
    key_id: str | None = None  # the API key an external worker speaks with
    jobs: set[str] = field(default_factory=set)
    stops: dict[str, PendingStop] = field(default_factory=dict)
    last_ping: float | None = None
    crashes: int = 0  # failed starts in a row (a handler that cannot load)
    error: str | None = None  # why it is unhealthy
    task: asyncio.Task[None] | None = None
    _stop_waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def signal_stop(self, job_id: str, handed_at: float) -> None:
        """Ask the worker to stop ``job_id`` (handed to it at ``handed_at``)."""
        self.stops[job_id] = PendingStop(handed_at=handed_at)
        self._wake()

    def stopped(self, job_id: str) -> None:
        """The worker no longer holds ``job_id``: forget its stop."""
        self.stops.pop(job_id, None)

    def pinged(self, listed: set[str], now: float) -> None:
        """A ping listing the job ids the worker holds. A pending stop ends when a ping
        stops listing its job, or when a ping without it follows an earlier ping received
        after the job was handed out (the first such ping may have been written before the
        worker had the job)."""
        for job_id, stop in list(self.stops.items()):
            if job_id in listed:
                stop.listed = True
            elif stop.listed or (self.last_ping is not None and self.last_ping > stop.handed_at):
                del self.stops[job_id]
        self.last_ping = now

    def holds_nothing(self) -> None:
        """The worker asked for work saying it holds no job: every pending stop is moot."""
        self.stops.clear()

    def _wake(self) -> None:
        waiters, self._stop_waiters = self._stop_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_stop(self, timeout: float, redeliver_s: float) -> list[str]:
        """The job ids to stop: at once when a signal is new, else after ``redeliver_s``
        when signals are pending, else after ``timeout`` or at the next new signal."""
        fresh = any(not stop.delivered for stop in self.stops.values())
        hold = 0.0 if fresh else min(timeout, redeliver_s) if self.stops else timeout
        if hold > 0:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._stop_waiters.append(fut)
            try:
                await asyncio.wait_for(fut, hold)
            except TimeoutError:
                pass
            finally:
                if fut in self._stop_waiters:
                    self._stop_waiters.remove(fut)
        for stop in self.stops.values():
            stop.delivered = True
        return list(self.stops)


@dataclass
class Counters:
    """Inspection counters for one endpoint (``GET /_emulator/stats``)."""

    submissions: int = 0
    cancels: int = 0
    purges: int = 0
    purged_jobs: int = 0
    retries: int = 0
    webhooks_sent: int = 0
    webhooks_failed: int = 0
    responses_429: int = 0
    results_refused: int = 0
    chunks_split: int = 0
    requeued: int = 0
    worker_crashes: int = 0
    open_jobs: int = 0
    """Jobs created (or retried) and not yet final nor deleted: what the endpoint holds."""
    peak_open_jobs: int = 0
    """The most jobs it ever held at once (a fleet's ``max_in_flight``, witnessed)."""
    faults_injected: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    requests: dict[str, int] = field(default_factory=dict)

    def opened(self) -> None:
        self.open_jobs += 1
        self.peak_open_jobs = max(self.peak_open_jobs, self.open_jobs)

    def count_fault(self, kind: str) -> None:
        self.faults_injected += 1
        self.faults_by_kind[kind] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "faults_by_kind": dict(self.faults_by_kind),
            "requests": dict(self.requests),
        }


@dataclass(eq=False)
class EndpointState:
    """An endpoint: its configuration (changed live by the admin API) and its runtime."""

    config: EndpointConfig
    jobs: dict[str, Job] = field(default_factory=dict)
    queue: OrderedDict[str, Job] = field(default_factory=OrderedDict)
    workers: dict[str, Worker] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    retried: int = 0
    throttled: int = 0  # workers wanted but held back by the account's worker cap
    counters: Counters = field(default_factory=Counters)
    created_at: float = 0.0
    dice: FaultDice | None = None  # set by the engine from config.faults
    _queue_waiters: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.config.id

    def enqueue(self, job: Job, now: float) -> None:
        job.status = IN_QUEUE
        job.queued_at = now
        self.queue[job.id] = job
        waiters, self._queue_waiters = self._queue_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def pop_next(self) -> Job | None:
        if not self.queue:
            return None
        _, job = self.queue.popitem(last=False)
        return job

    async def wait_queue(self, timeout: float) -> None:
        if self.queue or timeout <= 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue_waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if fut in self._queue_waiters:
                self._queue_waiters.remove(fut)

    def health(self) -> dict[str, Any]:
        workers = dict.fromkeys(
            ("idle", "initializing", "ready", "running", "throttled", "unhealthy"), 0
        )
        for worker in self.workers.values():
            workers[worker.state] = workers.get(worker.state, 0) + 1
        workers["throttled"] += self.throttled
        in_progress = sum(len(w.jobs) for w in self.workers.values())
        return {
            "jobs": {
                "completed": self.completed,
                "failed": self.failed,
                "inProgress": in_progress,
                "inQueue": len(self.queue),
                "retried": self.retried,
            },
            "workers": workers,
        }


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
