"""Thin Celery tasks: decode arguments, hand over to the process' bridge service, return.

``bridge.run`` returns once its request is recorded (the GPU job is followed by the
tracker, not by a Celery slot); its result, chain and links are delivered when the job
ends. A revoke reaches the GPU job whenever it comes: ``revoke`` also records a cancel in
the ledger (a tombstone when the request has not arrived yet), and ``bridge.run`` is
never discarded as revoked by Celery, so the bridge answers it — ``AsyncResult.get()``
raises ``JobCancelled``, at every moment, never Celery's ``TaskRevokedError``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject, Retry
from celery.worker import control
from celery.worker.control import _find_requests_by_id
from celery.worker.request import Request as CeleryRequest
from celery.worker.state import revoked as revoked_tasks
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.core.model import Admitted, Continuation, Refusal
from bridge.ingress.admission import task_arguments
from bridge.worker.app import Runtime, record_cancels

log = logging.getLogger("bridge.tasks")

REDIS_AWAY = (RedisConnectionError, RedisTimeoutError)
"""The bridge's Redis cannot be reached now (a failover, a restart): come back later."""


def hand_back(task: Task, exc: Exception) -> Retry | Reject:
    """What ``bridge.run`` raises when the bridge's Redis is away (during a Sentinel
    failover, for a second or two): the message goes back to the broker instead of
    being acknowledged as failed and lost. A retry in a second when the broker takes it;
    when the broker is away too (the same Redis), Celery would drop the message
    (``Reject(requeue=False)``), so it is rejected with ``requeue=True`` instead, and
    stays unacknowledged in the broker until its visibility timeout hands it back."""
    log.warning("bridge.run %s: Redis is away (%s); handing the message back", task.request.id,
                exc)  # fmt: skip
    try:
        retry: Retry = task.retry(countdown=1.0, exc=exc, throw=False)
    except Reject:
        return Reject(exc, requeue=True)
    return retry


class BridgeRunRequest(CeleryRequest):  # type: ignore[misc]  # Celery is untyped
    """``bridge.run`` as the worker receives it: a revoked one is still run, so the
    bridge answers it CANCELLED (its cancel is in the ledger) instead of Celery
    discarding it as REVOKED."""

    def revoked(self) -> bool:
        if self.id in revoked_tasks and not self._already_revoked:
            return False
        result: bool = super().revoked()
        return result


# max_retries=None: a task handed back while its endpoint's breaker is open comes back
# until the breaker lets it through (Celery's default would give up after 3).
@shared_task(
    name="bridge.run",
    bind=True,
    ignore_result=True,
    Request=BridgeRunRequest,
    max_retries=None,
    Strategy="bridge.worker.handover:strategy",
)
def run(self: Task, *args: Any, **kwargs: Any) -> str:
    """Submit ``input`` to ``route``'s endpoint (keyword arguments: ``route``, ``input``,
    ``mode``, ``request_id``, ``reply_to``, ``policy``, ``webhook``, ``s3_config``,
    ``deadline_s``, ``endpoint_id``). ``AsyncResult.get()`` returns the job's output, or
    raises JobFailed / JobCancelled / JobTimedOut / JobExpired / RequestRejected.

    Wrong arguments never fail the task itself: the request is answered REJECTED (reply
    list, dead letter, and the error from ``get()``)."""
    req = self.request
    runtime = Runtime.get(self.app)
    service = runtime.service
    timeout = service.settings.submit_timeout_s
    arguments, unexpected = task_arguments(args, kwargs)
    continuation = Continuation(
        task_id=req.id, root_id=req.root_id, parent_id=req.parent_id,
        chain=req.chain, callbacks=req.callbacks, errbacks=req.errbacks,
    )  # fmt: skip
    try:
        admitted = runtime.loop.call(
            service.admit_task(arguments, unexpected, continuation), timeout=timeout
        )
        if admitted is Admitted.DEFERRED:
            # The endpoint is down: hand the message back to the broker for later, chain
            # and all (not taken over yet), instead of burning its retries.
            route = str(arguments.get("route") or "")
            wait = runtime.loop.call(service.breaker_wait(route), timeout=timeout)
            raise self.retry(countdown=max(1.0, wait))
    except REDIS_AWAY as exc:
        raise hand_back(self, exc) from exc
    # Celery would run these now; the bridge runs them when the job has ended.
    req.chain = req.callbacks = req.errbacks = None
    return "rejected" if isinstance(admitted, Refusal) else admitted.value


@shared_task(name="bridge.health", bind=True)
def health(self: Task, route: str) -> dict[str, Any]:
    """Check ``route``'s endpoint health and store the snapshot."""
    runtime = Runtime.get(self.app)
    return runtime.loop.call(runtime.service.check_health(route), timeout=60)


@shared_task(name="bridge.purge", bind=True)
def purge(self: Task, route: str) -> dict[str, Any]:
    """Purge ``route``'s endpoint queue; purged requests get their final replies."""
    runtime = Runtime.get(self.app)
    return runtime.loop.call(runtime.service.purge(route), timeout=60)


@shared_task(name="bridge.reap", bind=True)
def reap(self: Task) -> int:
    """Adopt and resume the requests of workers whose lease expired; returns how many."""
    runtime = Runtime.get(self.app)
    return runtime.loop.call(runtime.service.recover(limit=10_000, full=True), timeout=120)


# -- revoke reaches the GPU ------------------------------------------------------------

_celery_revoke = control.Panel.data["revoke"]


@control.control_command(
    name="revoke",
    args=[("task_id", str), ("terminate", bool), ("signal", str)],
    signature="[id1 [id2 [... [idN]]]]",
)
def revoke(state: Any, task_id: Any, terminate: bool = False, signal: Any = None, **kw: Any) -> Any:
    """Revoke, the bridge's way: a cancel for each id is recorded in the ledger (and so
    reaches its job), whether the request has arrived yet or not, and the bridge answers
    it CANCELLED. Celery's own revoke (which since 5.7 also marks a pending task REVOKED
    in the result backend, so ``get()`` would raise ``TaskRevokedError`` instead of
    ``JobCancelled``) is applied only to this worker's other tasks (health, purge, reap)."""
    ids = [str(i) for i in (task_id if isinstance(task_id, list | tuple | set) else [task_id])]
    record_cancels(state.app.conf.bridge_settings, ids)
    others = [r.id for r in _find_requests_by_id(ids) if r.name != "bridge.run"]
    if others:
        _celery_revoke(state, others, terminate=terminate, signal=signal, **kw)
    return control.ok(f"tasks {', '.join(ids)} flagged as revoked")


# -- health: is this worker's bridge serving? --------------------------------------------


@control.inspect_command(name="bridge_health")
def bridge_health(state: Any, **_: Any) -> dict[str, Any]:
    """The bridge's own view of this worker (``bridge ping worker`` asks it): its loop
    answers, its lease is fresh, its door and listener run, Redis answers. Celery's own
    ping only proves the consumer thread is alive."""
    runtime = Runtime.current()
    if runtime is None:  # prefork: each child runs its own bridge; the parent has none
        return {"ok": True, "problems": [], "note": "prefork: checked in the children"}
    try:
        health = runtime.loop.call(runtime.service.health(), timeout=5)
    except TimeoutError:
        return {"ok": False, "problems": ["the bridge's event loop does not answer"]}
    return {"ok": health.ok, "problems": list(health.problems),
            "in_flight": health.in_flight, "backlog": health.backlog}  # fmt: skip
