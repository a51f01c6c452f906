"""Thin Celery tasks: decode arguments, hand over to the process' bridge service, return.

``bridge.run`` returns once its request is recorded (the GPU job is followed by the
tracker, not by a Celery slot); its result, chain and links are delivered when the job
ends. ``revoke`` is extended so that revoking a ``bridge.run`` task also cancels its GPU
job (Celery alone only forgets tasks that have not started).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import redis
from celery import Task, shared_task
from celery.worker import control
from pydantic import ValidationError

from bridge.errors import RequestRejected
from bridge.ingress.envelope import REPLY_KEY, REQUEST_ID, Envelope, describe
from bridge.ingress.json_door import check_size, to_request
from bridge.settings import BridgeSettings
from bridge.worker import periodic
from bridge.worker.app import Runtime
from bridge.worker.ledger import CANCEL_SCRIPT
from bridge.worker.model import Continuation, Request

log = logging.getLogger("bridge.tasks")


@shared_task(name="bridge.run", bind=True, ignore_result=True)
def run(
    self: Task,
    route: str | None = None,
    input: dict[str, Any] | None = None,
    mode: str | None = None,
    request_id: str | None = None,
    reply_to: str | None = None,
    policy: dict[str, Any] | None = None,
    webhook: str | None = None,
    s3_config: dict[str, Any] | None = None,
    deadline_s: float | None = None,
    endpoint_id: str | None = None,
    *unexpected_args: Any,
    **unexpected: Any,
) -> str:
    """Submit ``input`` to ``route``'s endpoint. ``AsyncResult.get()`` returns the job's
    output, or raises JobFailed / JobCancelled / JobTimedOut / RequestRejected.

    Wrong arguments never fail the task itself: the request is answered REJECTED (reply
    list, dead letter, and the error from ``get()``)."""
    req = self.request
    runtime = Runtime.get(self.app)
    service = runtime.service
    route_name = route if isinstance(route, str) else ""
    if route_name and (wait := runtime.loop.call(service.route_open(route_name), timeout=10)) > 0:
        # The endpoint is down: hand the message back to the broker for later, chain and
        # all (before we take them over below), instead of burning its retries.
        raise self.retry(countdown=wait, max_retries=None)
    continuation = Continuation(
        task_id=req.id,
        root_id=req.root_id,
        parent_id=req.parent_id,
        chain=req.chain,
        callbacks=req.callbacks,
        errbacks=req.errbacks,
    )
    # Celery would run these now; the tracker runs them when the job has ended.
    req.chain = req.callbacks = req.errbacks = None
    settings: BridgeSettings = service.settings
    fields = {
        "id": request_id, "route": route, "endpoint_id": endpoint_id, "input": input,
        "reply_to": reply_to, "mode": mode, "policy": policy, "webhook": webhook,
        "s3Config": s3_config, "deadline_s": deadline_s,
    }  # fmt: skip
    safe_id = (
        request_id if isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id) else None
    )
    request = Request(
        id=safe_id or req.id,
        route=route_name,
        input=input if isinstance(input, dict) else {},
        mode=mode or "poll",
        reply_to=_valid(reply_to, REPLY_KEY),
        continuation=continuation,
    )
    try:
        if unexpected_args or unexpected:
            extra = [*sorted(unexpected), *(["extra positional arguments"] * bool(unexpected_args))]
            raise RequestRejected(
                f"unexpected argument(s): {', '.join(extra)}", "invalid_arguments", request.id
            )
        envelope = Envelope.model_validate({k: v for k, v in fields.items() if v is not None})
        request = to_request(envelope, settings)
        request.id = safe_id or req.id
        request.continuation = continuation
        check_size(len(json.dumps(request.body())), request, settings)
        return runtime.loop.call(service.tracker.accept(request), timeout=settings.submit_timeout_s)
    except ValidationError as exc:
        error = RequestRejected(describe(exc), "invalid_arguments", request.id)
    except RequestRejected as exc:
        error = exc
    runtime.loop.call(service.reject_request(request, error), timeout=settings.submit_timeout_s)
    return "rejected"


def _valid(value: Any, pattern: re.Pattern[str]) -> str | None:
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


@shared_task(name="bridge.health", bind=True)
def health(self: Task, route: str) -> dict[str, Any]:
    """Check ``route``'s endpoint health and store the snapshot."""
    runtime = Runtime.get(self.app)
    return runtime.loop.call(periodic.check_health(runtime.service, route), timeout=60)


@shared_task(name="bridge.purge", bind=True)
def purge(self: Task, route: str) -> dict[str, Any]:
    """Purge ``route``'s endpoint queue; purged requests get their final replies."""
    runtime = Runtime.get(self.app)
    return runtime.loop.call(periodic.purge(runtime.service, route), timeout=60)


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
    """Celery's revoke, plus: ask the bridge to cancel the task's request (and its job)."""
    reply = _celery_revoke(state, task_id, terminate=terminate, signal=signal, **kw)
    ids = task_id if isinstance(task_id, list | tuple | set) else [task_id]
    settings: BridgeSettings = state.app.conf.bridge_settings
    try:
        client = redis.Redis.from_url(settings.redis_url)
        try:
            script = client.register_script(CANCEL_SCRIPT)
            prefix = settings.key_prefix
            for one in ids:
                script(
                    keys=[f"{prefix}:req:{one}", f"{prefix}:task:{one}"],
                    args=[f"{prefix}:cancel", 86400, one, f"{prefix}:req:"],
                )
        finally:
            client.close()
    except redis.RedisError:
        log.exception("revoke could not reach the bridge's Redis; the job may go on")
    return reply
