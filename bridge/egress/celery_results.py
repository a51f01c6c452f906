"""The Celery side of a request's end: result backend states and canvas continuation.

``bridge.run`` returns as soon as its request is accepted, so Celery itself would store
nothing useful and would run the chain too early. The task therefore takes over its
chain and links (see ``Continuation``), and this module does what Celery's tracer would
have done once the GPU job ends: store the result (or a typed error) under the task id,
then start the next step of the chain with the output.

With a Redis result backend, states and results are written from the event loop by the
asyncio Redis client, in Celery's own format (a ``SET`` and a ``PUBLISH``, which wakes
``AsyncResult.get()`` through the backend's pub/sub; every request's writes of one loop
turn share one pipeline, see :mod:`bridge.core.scripts`); a progress state never
overwrites a final one (a small script checks). Other backends, and the broker (a chain's
next task), are blocking: those calls run in one dedicated thread, in order.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery, states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.canvas import signature
from redis.asyncio import Redis

from bridge.core.connection import async_redis, is_sentinel
from bridge.core.model import (
    CANCELLED,
    COMPLETED,
    EXPIRED,
    REJECTED,
    TIMED_OUT,
    Continuation,
    Outcome,
)
from bridge.core.scripts import NamedScript, batcher_for
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


PROGRESS = NamedScript(
    """
local current = redis.call('GET', key)
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and (meta['status'] == 'SUCCESS'
      or meta['status'] == 'FAILURE' or meta['status'] == 'REVOKED') then
    return 0
  end
end
if tonumber(expires) > 0 then
  redis.call('SET', key, value, 'EX', expires)
else
  redis.call('SET', key, value)
end
redis.call('PUBLISH', key, value)
return 1
""",
    keys=("key",),
    args=("value", "expires"),
)
"""An in-flight state, written unless the task already has its final one."""


def fast_backend(app: Celery, shared: tuple[str, Redis] | None = None) -> Redis | None:
    """An asyncio client on the app's result backend when it is Redis (a server, or a
    primary found through Sentinel), the one the fast path writes with; None for any
    other backend. ``shared``: a URL and the client already open on it (the bridge's
    own), used when the backend is that same URL, so that the results join the ledger's
    pipelines instead of making round trips of their own."""
    backend = app.backend
    url = str(app.conf.result_backend or "")
    if shared is not None and url == shared[0] and type(backend) in (RedisBackend,
                                                                     SentinelBackend):  # fmt: skip
        return shared[1]
    if type(backend) is SentinelBackend and is_sentinel(url):
        options = app.conf.result_backend_transport_options or {}
        return async_redis(url, options.get("master_name"))
    if type(backend) is not RedisBackend or not url.startswith(("redis://", "rediss://")):
        return None
    return async_redis(url)


class CeleryResults:
    """Writes states and results to the Celery result backend and continues canvases.

    Args:
        app: the Celery app.
        redis: an asyncio client on the result backend (see :func:`fast_backend`); None
            to write everything through Celery's blocking backend.
        owned: close ``redis`` with this writer (False: it is shared and closed by its
            owner).
    """

    def __init__(self, app: Celery, redis: Redis | None = None, *, owned: bool = True) -> None:
        self.app = app
        self.redis = redis
        self._owned = owned  # closed with this writer (not when shared with the ledger)
        self._progress = PROGRESS.bind(redis) if redis is not None else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-celery")

    async def _call(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, func, *args)

    async def progress(self, task_id: str, state: str, meta: dict[str, Any]) -> None:
        """Show an in-flight state (``IN_QUEUE``, ``IN_PROGRESS``) and its job id."""
        if self._progress is not None:
            key, value, expires = self._encoded(task_id, meta, state)
            await self._progress(key=key, value=value, expires=expires)
        else:
            await self._call(self._store_state, task_id, state, meta)

    async def finish(
        self, continuation: Continuation, outcome: Outcome, request_id: str, endpoint_id: str
    ) -> None:
        """Store the final result and run what follows it in the canvas."""
        cont = continuation
        follows = cont.callbacks or cont.chain or cont.errbacks
        if self.redis is None or follows:
            await self._call(self._finish, cont, outcome, request_id, endpoint_id)
            return
        if outcome.status == COMPLETED:
            key, value, expires = self._encoded(cont.task_id, outcome.output, states.SUCCESS)
        else:
            exc = to_exception(outcome, request_id, endpoint_id)
            key, value, expires = self._encoded(cont.task_id, exc, states.FAILURE)
        # With the other requests' writes of this loop turn, in one pipeline.
        batch = batcher_for(self.redis)
        stored = batch.command("SET", key, value, *(("EX", expires) if expires else ()))
        published = batch.command("PUBLISH", key, value)
        await stored
        await published

    def _encoded(self, task_id: str, result: Any, state: str) -> tuple[str, Any, int]:
        """What Celery's Redis backend would write: its key, value and expiry."""
        backend = self.app.backend
        meta = backend._get_result_meta(
            result=backend.encode_result(result, state), state=state, traceback=None,
            request=None,
        )  # fmt: skip
        meta["task_id"] = task_id
        key = backend.get_key_for_task(task_id)
        expires = backend.expires
        return (key.decode() if isinstance(key, bytes) else key, backend.encode(meta),
                int(expires.total_seconds() if hasattr(expires, "total_seconds")
                    else expires or 0))  # fmt: skip

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown, True)
        if self.redis is not None and self._owned:
            await self.redis.aclose()

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
