"""The worker side of the protocol (ENDPOINT_API.md §10), for external worker processes.

An unmodified ``runpod.serverless.start(...)`` worker pointed at these URLs through its
``RUNPOD_WEBHOOK_*`` variables takes jobs, streams chunks, reports results, receives
stop signals for cancelled jobs and pings. A worker not heard from for
``worker_dead_after_s`` is declared dead and its running jobs go back to the queue
(RunPod retries them); a worker whose ping says ``status=unhealthy`` gets no more jobs.

Reports are judged as the platform judges them (:mod:`bridge.emulator.results`): a
job-done body over ``result_max_bytes`` or with a non-string ``error`` gets 400 and its
job ends ``COMPLETED`` without output; a stream chunk over ``stream_chunk_max_bytes`` is
split into several.

Who may act as a worker: any accepted API key (all keys belong to the one account the
emulator simulates), but only on endpoints whose template is ``external`` (endpoints with
simulated workers answer 403: an outsider could otherwise take their jobs, read their
inputs and post forged results), and a worker id belongs to the key that first used it
(another key gets 403 for it, so it cannot report or stop that worker's jobs).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bridge.emulator.engine import Engine
from bridge.emulator.http import ENGINE, KEY_ID, SETTINGS, ApiError, ok, read_bounded, read_json
from bridge.emulator.state import EndpointState, Job, Worker

_NOT_JSON: Any = object()


def _worker(request: web.Request) -> tuple[Engine, EndpointState, Worker]:
    """The endpoint and the (external) worker a worker-protocol request speaks for."""
    engine = request.app[ENGINE]
    state = engine.endpoint(request.match_info["endpoint_id"])
    if not engine.is_external(state):
        raise ApiError(
            403,
            f"endpoint {state.id!r} runs simulated workers: the worker protocol is served "
            "only on endpoints whose template is 'external'",
        )
    worker_id, key_id = request.match_info["worker_id"], request[KEY_ID]
    worker = state.workers.get(worker_id)
    if worker is None:
        worker = Worker(id=worker_id, external=True, state="idle", key_id=key_id)
        state.workers[worker_id] = worker
    elif worker.key_id != key_id:
        raise ApiError(403, f"worker {worker_id!r} belongs to another API key")
    worker.last_seen = engine.now()
    return engine, state, worker


def _job_payload(job: Job) -> dict[str, Any]:
    payload: dict[str, Any] = {"id": job.id, "input": job.input}
    if job.webhook:
        payload["webhook"] = job.webhook
    if job.s3_config:
        payload["s3Config"] = job.s3_config
    return payload


def _gone(request: web.Request) -> bool:
    """True when the client has closed its connection."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _take(request: web.Request, batch: bool) -> web.Response:
    engine, state, worker = _worker(request)
    size = 1
    if batch:
        try:
            size = max(1, int(request.query.get("batch_size", "1")))
        except ValueError:
            raise ApiError(400, "batch_size must be an integer") from None
    if request.query.get("job_in_progress") == "0":
        worker.holds_nothing()
    if worker.state == "unhealthy":  # it failed its fitness check: nothing more for it
        worker.last_seen = engine.now()
        return web.Response(status=204)
    deadline = engine.now() + request.app[SETTINGS].job_take_hold_s
    while not state.queue and engine.now() < deadline:
        await state.wait_queue(deadline - engine.now())
    if _gone(request):
        # The worker hung up during the hold (it died or gave up): a job handed to
        # this answer would reach nobody and sit IN_PROGRESS until the reaper.
        return web.Response(status=204)
    jobs: list[dict[str, Any]] = []
    while len(jobs) < size:
        job = engine.take(state, worker)
        if job is None:
            break
        jobs.append(_job_payload(job))
    worker.last_seen = engine.now()
    if not jobs:
        return web.Response(status=204)
    return ok(jobs if batch else jobs[0])


async def job_take(request: web.Request) -> web.Response:
    return await _take(request, batch=False)


async def job_take_batch(request: web.Request) -> web.Response:
    return await _take(request, batch=True)


def _reported_job(request: web.Request, worker: Worker, state: EndpointState) -> Job:
    """The job a worker reports on (its own). Reports for a job that has already ended
    (cancelled, timed out) are accepted and then ignored by the engine."""
    job_id = request.match_info["job_id"]
    job = state.jobs.get(job_id)
    if job is None:
        raise ApiError(404, f"job {job_id!r} not found (expired?)")
    if job.worker_id != worker.id:
        raise ApiError(400, f"job {job.id!r} is not assigned to this worker")
    return job


async def _report(request: web.Request, limit: int) -> tuple[Any, int]:
    """A report's body (parsed JSON, or ``_NOT_JSON``) and its size; an over-long body is
    not read and its size is its declared length, or ``limit + 1``."""
    raw = await read_bounded(request, limit)
    if raw is None:
        return None, max(request.content_length or 0, limit + 1)
    try:
        return json.loads(raw), len(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _NOT_JSON, len(raw)


async def job_done(request: web.Request) -> web.Response:
    engine, state, worker = _worker(request)
    body, size = await _report(request, request.app[SETTINGS].result_max_bytes)
    if not (isinstance(body, dict) and body.get("status") == "IN_PROGRESS"):
        worker.stopped(request.match_info["job_id"])  # it holds the job no more
    job = _reported_job(request, worker, state)
    verdict = engine.report(state, job, body, size)
    if verdict.refused is not None:
        raise ApiError(400, verdict.refused)
    return ok({})


async def job_stream(request: web.Request) -> web.Response:
    engine, state, worker = _worker(request)
    body = await read_json(request, max_bytes=request.app[SETTINGS].result_max_bytes, any_type=True)
    if not isinstance(body, dict) or "output" not in body:
        raise ApiError(400, 'job-stream body must be {"output": <chunk>}')
    engine.add_chunk(state, _reported_job(request, worker, state), body["output"])
    return ok({})


async def job_stop(request: web.Request) -> web.Response:
    engine, _, worker = _worker(request)
    settings = request.app[SETTINGS]
    ids = await worker.wait_stop(settings.job_take_hold_s, settings.stop_redeliver_s)
    worker.last_seen = engine.now()
    if not ids:
        return web.Response(status=204)
    return ok({"jobsToStop": ids})


async def ping(request: web.Request) -> web.Response:
    engine, _, worker = _worker(request)
    if request.query.get("status") == "unhealthy":
        worker.state = "unhealthy"
    else:  # runpod 1.12 sends the ids it holds, comma-separated; none: no job_id at all
        listed = {i for i in request.query.get("job_id", "").split(",") if i}
        worker.pinged(listed, engine.now())
    return ok({})


def setup(app: web.Application) -> None:
    base = "/v2/{endpoint_id}"
    add = app.router.add_route
    add("GET", f"{base}/job-take/{{worker_id}}", job_take, name="w:job-take")
    add("GET", f"{base}/job-take-batch/{{worker_id}}", job_take_batch, name="w:job-take-batch")
    add("POST", f"{base}/job-done/{{worker_id}}/{{job_id}}", job_done, name="w:job-done")
    add("POST", f"{base}/job-stream/{{worker_id}}/{{job_id}}", job_stream, name="w:job-stream")
    add("GET", f"{base}/job-stop/{{worker_id}}", job_stop, name="w:job-stop")
    add("GET", f"{base}/ping/{{worker_id}}", ping, name="w:ping")
