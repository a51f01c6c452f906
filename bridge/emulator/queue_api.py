"""The client side of the queue API: ``/v2/{endpoint_id}/run``, ``status``, ``stream`` …

Route names start with ``q:`` followed by the operation; the middleware in ``app.py``
uses that name for counters, rate limits and fault injection.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bridge.emulator.engine import Conflict
from bridge.emulator.http import ENGINE, SETTINGS, ApiError, ok, read_json, wait_ms
from bridge.emulator.settings import MAX_POLICY_MS, EmulatorSettings
from bridge.emulator.state import Policy


def _millis(name: str, value: Any, low: int) -> int:
    """A policy duration in milliseconds, within [low, 7 days] (400 otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ApiError(400, f"{name} must be a positive integer (milliseconds)")
    if value < low:
        raise ApiError(400, f"{name} must be at least {low} ms")
    if value > MAX_POLICY_MS:
        raise ApiError(400, f"{name} must be at most 7 days ({MAX_POLICY_MS} ms)")
    return value


def _policy(raw: Any, settings: EmulatorSettings) -> Policy:
    """``policy``, bounded as RunPod bounds it (``ttl`` from 10 s, ``executionTimeout``
    from 5 s, both to 7 days) in the runpod profile; the fast one takes any positive
    value up to 7 days, so tests can use short ones."""
    if raw is None:
        return Policy()
    if not isinstance(raw, dict):
        raise ApiError(400, "'policy' must be a JSON object")
    unknown = set(raw) - {"executionTimeout", "lowPriority", "ttl"}
    if unknown:
        raise ApiError(400, f"unknown policy field(s): {', '.join(sorted(unknown))}")
    lows = {"ttl": settings.min_ttl_ms, "executionTimeout": settings.min_execution_timeout_ms}

    def millis(name: str) -> int | None:
        value = raw.get(name)
        return None if value is None else _millis(f"policy.{name}", value, lows[name])

    low = raw.get("lowPriority", False)
    if not isinstance(low, bool):
        raise ApiError(400, "policy.lowPriority must be true or false")
    return Policy(
        execution_timeout_ms=millis("executionTimeout"), low_priority=low, ttl_ms=millis("ttl")
    )


async def _submit(request: web.Request, *, sync: bool) -> Any:
    settings = request.app[SETTINGS]
    engine = request.app[ENGINE]
    endpoint_id = request.match_info["endpoint_id"]
    engine.endpoint(endpoint_id)  # 404 before we read a large body for nothing
    limit = settings.runsync_max_bytes if sync else settings.run_max_bytes
    body = await read_json(request, max_bytes=limit)
    if not isinstance(body, dict):
        raise ApiError(400, 'request body must be a JSON object like {"input": {...}}')
    if "input" not in body:
        raise ApiError(400, "'input' is required")
    if not isinstance(body["input"], dict):
        raise ApiError(400, "'input' must be a JSON object")
    webhook = body.get("webhook")
    if webhook is not None and not (
        isinstance(webhook, str) and webhook.startswith(("http://", "https://"))
    ):
        raise ApiError(400, "'webhook' must be an http(s) URL")
    s3 = body.get("s3Config")
    if s3 is not None and not isinstance(s3, dict):
        raise ApiError(400, "'s3Config' must be a JSON object")
    return engine.submit(
        endpoint_id,
        body["input"],
        sync=sync,
        policy=_policy(body.get("policy"), settings),
        webhook=webhook,
        s3_config=s3,
    )


async def run(request: web.Request) -> web.Response:
    job = await _submit(request, sync=False)
    return ok({"id": job.id, "status": job.status})


async def runsync(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    hold = wait_ms(request, settings.runsync_default_wait_ms) / 1000
    job = await _submit(request, sync=True)
    engine = request.app[ENGINE]
    deadline = engine.now() + hold
    while not job.final and engine.now() < deadline:
        await job.wait_change(deadline - engine.now())
    if job.final:
        return ok(job.to_status(engine.now()))
    return ok({"id": job.id, "status": job.status})


async def status(request: web.Request) -> web.Response:
    """The job; ``?ttl=<ms>`` also sets its TTL anew, counted from now (RunPod's tip:
    "sets the TTL for the job", e.g. to drop a read result sooner than its retention)."""
    engine = request.app[ENGINE]
    state, job = engine.job(request.match_info["endpoint_id"], request.match_info["job_id"])
    raw = request.query.get("ttl")
    if raw is not None:
        try:
            value: Any = int(raw)
        except ValueError:
            value = raw
        engine.set_ttl(state, job, _millis("ttl", value, 1))
    return ok(job.to_status(engine.now()))


async def status_sync(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    hold = wait_ms(request, request.app[SETTINGS].status_sync_default_wait_ms) / 1000
    state, job = engine.job(request.match_info["endpoint_id"], request.match_info["job_id"])
    deadline = engine.now() + hold
    while not job.final and engine.now() < deadline and state.jobs.get(job.id) is job:
        await job.wait_change(deadline - engine.now())
    engine.job(state.id, job.id)  # 404 if it was deleted while we waited
    return ok(job.to_status(engine.now()))


async def stream(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    # Held by default (RunPod's JS SDK polls /stream back to back, relying on the hold).
    hold = wait_ms(request, request.app[SETTINGS].stream_default_wait_ms) / 1000
    state, job = engine.job(request.match_info["endpoint_id"], request.match_info["job_id"])
    deadline = engine.now() + hold
    while (
        not job.final
        and job.cursor >= len(job.chunks)
        and engine.now() < deadline
        and state.jobs.get(job.id) is job
    ):
        await job.wait_change(deadline - engine.now())
    engine.job(state.id, job.id)
    return ok({"id": job.id, "status": job.status, "stream": job.take_chunks()})


async def cancel(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    job = engine.cancel(request.match_info["endpoint_id"], request.match_info["job_id"])
    return ok({"id": job.id, "status": job.status})


async def retry(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    try:
        job = engine.retry(request.match_info["endpoint_id"], request.match_info["job_id"])
    except Conflict as exc:
        raise ApiError(400, str(exc)) from None
    return ok({"id": job.id, "status": job.status})


async def purge_queue(request: web.Request) -> web.Response:
    removed = request.app[ENGINE].purge(request.match_info["endpoint_id"])
    return ok({"removed": removed, "status": "completed"})


async def health(request: web.Request) -> web.Response:
    return ok(request.app[ENGINE].endpoint(request.match_info["endpoint_id"]).health())


def setup(app: web.Application) -> None:
    base = "/v2/{endpoint_id}"
    add = app.router.add_route
    add("POST", f"{base}/run", run, name="q:run")
    add("POST", f"{base}/runsync", runsync, name="q:runsync")
    for method in ("GET", "POST"):
        suffix = "" if method == "GET" else "-post"
        add(method, f"{base}/status/{{job_id}}", status, name=f"q:status{suffix}")
        add(method, f"{base}/status-sync/{{job_id}}", status_sync, name=f"q:status-sync{suffix}")
        add(method, f"{base}/stream/{{job_id}}", stream, name=f"q:stream{suffix}")
    add("POST", f"{base}/cancel/{{job_id}}", cancel, name="q:cancel")
    add("POST", f"{base}/retry/{{job_id}}", retry, name="q:retry")
    add("POST", f"{base}/purge-queue", purge_queue, name="q:purge-queue")
    add("GET", f"{base}/health", health, name="q:health")
