"""The Celery side of a request's end: result backend states and canvas continuation.

``bridge.run`` returns as soon as its request is accepted, so Celery itself would store
nothing useful and would run the chain too early. The task therefore takes over its
chain and links (see ``Continuation``), and this module does what Celery's tracer would
have done once the GPU job ends: store the result (or a typed error) under the task id,
then start the next step of the chain with the output.

Celery's backend and broker clients are blocking, so every call runs in one dedicated
thread, which also keeps a request's writes in order (no late progress state can
overwrite a final one).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery, states
from celery.canvas import signature

from bridge.core.model import (
    CANCELLED,
    COMPLETED,
    EXPIRED,
    REJECTED,
    TIMED_OUT,
    Continuation,
    Outcome,
)
from bridge.errors import (
    JobCancelled,
    JobError,
    JobExpired,
    JobFailed,
    JobTimedOut,
    RequestRejected,
)

log = logging.getLogger("bridge.egress")

_MESSAGES = {
    CANCELLED: "job was cancelled",
    TIMED_OUT: "job timed out",
    EXPIRED: "the endpoint no longer knows the job (its result expired)",
}


def to_exception(outcome: Outcome, request_id: str, endpoint_id: str | None) -> BaseException:
    """The typed error ``AsyncResult.get()`` raises for an outcome other than COMPLETED."""
    if outcome.status == REJECTED:
        return RequestRejected(outcome.message or "rejected", outcome.reason or "", request_id)
    message = outcome.message or _MESSAGES.get(outcome.status, "job failed")
    if outcome.reason and outcome.reason not in message:
        message = f"{message} ({outcome.reason})"
    cls: type[JobError] = {
        CANCELLED: JobCancelled,
        TIMED_OUT: JobTimedOut,
        EXPIRED: JobExpired,
    }.get(outcome.status, JobFailed)
    return cls(message, outcome.status, endpoint_id, outcome.job_id, outcome.error)


class CeleryResults:
    """Writes states and results to the Celery result backend and continues canvases."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-celery")

    async def _call(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, func, *args)

    async def progress(self, task_id: str, state: str, meta: dict[str, Any]) -> None:
        """Show an in-flight state (``IN_QUEUE``, ``IN_PROGRESS``) and its job id."""
        await self._call(self._store_state, task_id, state, meta)

    async def finish(
        self, continuation: Continuation, outcome: Outcome, request_id: str, endpoint_id: str
    ) -> None:
        """Store the final result and run what follows it in the canvas."""
        await self._call(self._finish, continuation, outcome, request_id, endpoint_id)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    def _store_state(self, task_id: str, state: str, meta: dict[str, Any]) -> None:
        try:
            self.app.backend.store_result(task_id, meta, state)
        except Exception:  # a lost progress note must not end the request
            log.warning("could not store state %s for task %s", state, task_id, exc_info=True)

    def _finish(
        self, cont: Continuation, outcome: Outcome, request_id: str, endpoint_id: str
    ) -> None:
        backend = self.app.backend
        options = {"parent_id": cont.task_id, "root_id": cont.root_id or cont.task_id}
        if outcome.status == COMPLETED:
            # Like Celery: start the children before storing, so the result lists them.
            for callback in cont.callbacks or ():
                signature(callback, app=self.app).apply_async((outcome.output,), **options)
            if cont.chain:
                following = signature(cont.chain[-1], app=self.app)
                following.apply_async((outcome.output,), chain=cont.chain[:-1] or None, **options)
            backend.store_result(cont.task_id, outcome.output, states.SUCCESS)
            return
        exc = to_exception(outcome, request_id, endpoint_id)
        backend.store_result(cont.task_id, exc, states.FAILURE)
        for errback in cont.errbacks or ():
            try:
                signature(errback, app=self.app).apply_async((cont.task_id,), **options)
            except Exception:  # one broken error callback must not hide the others
                log.warning("error callback of task %s could not be sent", cont.task_id)
