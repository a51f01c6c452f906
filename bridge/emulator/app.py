"""The emulator's aiohttp application: ``create_app(settings)`` and ``serve(settings)``.

Middlewares, outermost first: JSON errors (no traceback ever leaves the server), the
Host check and the API key check (``security``), then for queue-API routes (named
``q:<operation>``) request counters, fault injection and RunPod's rate limits.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pydantic import ValidationError

from bridge.emulator import admin_graphql, admin_rest, queue_api, worker_api
from bridge.emulator.engine import Conflict, Engine, UnknownEndpoint, UnknownJob
from bridge.emulator.faults import UNHARMED, Fate, fail_op_message
from bridge.emulator.http import (
    ENGINE,
    SETTINGS,
    ApiError,
    error_response,
    ok,
    read_json,
)
from bridge.emulator.limits import ConcurrencyLimiter, RateLimiter
from bridge.emulator.security import KEYRING, KeyRing, check_host, require_key
from bridge.emulator.settings import ACCOUNT, EmulatorSettings, FaultConfig
from bridge.emulator.webhooks import WebhookSender
from bridge.emulator.workers import Fleet

log = logging.getLogger("bridge.emulator")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter", RateLimiter)
IN_FLIGHT: web.AppKey[ConcurrencyLimiter] = web.AppKey("in_flight", ConcurrencyLimiter)


class TlsConnections:
    """The TLS connections the server has served (weakly held)."""

    def __init__(self) -> None:
        self.transports: weakref.WeakSet[asyncio.Transport] = weakref.WeakSet()


TLS_CONNECTIONS: web.AppKey[TlsConnections] = web.AppKey("tls_connections", TlsConnections)


@web.middleware
async def track_tls(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Remember TLS connections: one whose client left without a TLS goodbye (requests
    does that) waits up to 30 s for it, so shutting down aborts them instead."""
    if request.transport is not None:
        request.app[TLS_CONNECTIONS].transports.add(request.transport)
    return await handler(request)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    except (UnknownEndpoint, UnknownJob) as exc:
        return error_response(404, str(exc.args[0]))
    except Conflict as exc:
        return error_response(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no such route: {request.method} {request.path}"
        elif exc.status == 413:
            message = "request body is too large"
        else:
            message = exc.reason
        return error_response(exc.status, message, {"Allow": exc.headers.get("Allow", "")})
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(500, "internal emulator error (see the emulator's log)")


@web.middleware
async def queue_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counters, fault injection, rate limits and concurrency caps for the queue API's
    routes. Limits are per user per endpoint, as RunPod's: every key of the emulator
    belongs to its one account, so they all share them."""
    route = request.match_info.route.name or ""
    if not route.startswith("q:"):
        return await handler(request)
    operation = route[2:].removesuffix("-post")
    engine = request.app[ENGINE]
    state = engine.endpoint(request.match_info["endpoint_id"])
    counters = state.counters
    counters.requests[operation] = counters.requests.get(operation, 0) + 1
    faults = state.config.faults
    # The fate is drawn now, before anything awaits: arrival order decides the sequence.
    fate = state.dice.roll(operation) if faults.active and state.dice else UNHARMED
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    if fate.early is not None:
        counters.count_fault(fate.early)
        return _injected(request, fate, state.id, operation)
    settings = request.app[SETTINGS]
    if settings.rate_limits_enabled:
        wait = request.app[LIMITER].check(ACCOUNT, state.id, operation)
        if wait is not None:
            counters.responses_429 += 1
            return error_response(
                429,
                f"rate limit for {operation} on endpoint {state.id!r} exceeded "
                f"({settings.rate_limits[operation]} per {settings.rate_window_s:g} s)",
                {"Retry-After": str(wait)},
            )
    slot = None
    if settings.concurrency_limits_enabled:
        slot = request.app[IN_FLIGHT].acquire(ACCOUNT, state.id, operation)
        if slot is None:
            counters.responses_429 += 1
            return error_response(
                429,
                f"too many concurrent {operation} requests on endpoint {state.id!r} "
                f"(at most {settings.concurrency_limits[operation]} at once)",
                {"Retry-After": "1"},
            )
    try:
        response = await handler(request)
    finally:
        if slot is not None:
            request.app[IN_FLIGHT].release(slot)
    if fate.drop_after:
        counters.count_fault("dropped_after")
        return _drop(request)
    return response


def _injected(request: web.Request, fate: Fate, endpoint_id: str, operation: str) -> web.Response:
    if fate.early == "dropped":
        return _drop(request)
    if fate.early == "rate_limited":
        return error_response(429, "injected fault: rate limited", {"Retry-After": "1"})
    if fate.early == "error":
        return error_response(500, "injected fault: internal server error")
    job_id = request.match_info.get("job_id")
    message = fail_op_message(fate.status, operation, endpoint_id, job_id)
    headers = {"Retry-After": "1"} if fate.status == 429 else None
    return error_response(fate.status, message, headers)


def _drop(request: web.Request) -> web.Response:
    """Close the connection without an answer (the client sees a disconnect). The
    response returned is never sent; aiohttp notes the closed connection quietly."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return error_response(500, "injected fault: connection dropped")


# -- the emulator's own routes: inspection and fault injection -------------------------


async def stats(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    endpoint_id = request.match_info.get("endpoint_id")
    if endpoint_id:
        return ok(engine.endpoint(endpoint_id).counters.to_dict())
    return ok({eid: s.counters.to_dict() for eid, s in engine.endpoints.items()})


async def jobs(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    state = engine.endpoint(request.match_info["endpoint_id"])
    now = engine.now()
    return ok({"jobs": [job.to_status(now) for job in state.jobs.values()]})


async def workers(request: web.Request) -> web.Response:
    """``GET /_emulator/workers/{endpoint}``: each worker's state, and why it is unhealthy."""
    state = request.app[ENGINE].endpoint(request.match_info["endpoint_id"])
    listed = [
        {
            "id": w.id,
            "state": w.state,
            "external": w.external,
            "jobs": sorted(w.jobs),
            "crashes": w.crashes,
            "error": w.error,
        }
        for w in state.workers.values()
    ]
    return ok({"workers": listed, "throttled": state.throttled})


async def set_faults(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    endpoint_id = request.match_info["endpoint_id"]
    engine.endpoint(endpoint_id)
    body = await read_json(request, max_bytes=64 * 1024, required=False)
    try:
        faults = FaultConfig.model_validate(body or {})
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ApiError(400, f"invalid faults: {details}") from None
    state = engine.set_faults(endpoint_id, faults)
    return ok(state.config.faults.model_dump())


async def revoke_key(request: web.Request) -> web.Response:
    """``POST /_emulator/keys/revoke`` ``{"key": "..."}``: that key gets 401 from now on."""
    body = await read_json(request, max_bytes=4096)
    key = body.get("key") if isinstance(body, dict) else None
    if not isinstance(key, str) or not key:
        raise ApiError(400, 'body must be {"key": "<the API key to revoke>"}')
    if not request.app[KEYRING].revoke(key):
        raise ApiError(404, "no such API key")
    return ok({"revoked": True})


class _AccessLogger(AbstractAccessLogger):
    """Method, path (never the query string: GraphQL may carry ``api_key``), status."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %.1fms", request.method, request.path, response.status, time * 1000
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def create_app(settings: EmulatorSettings | None = None, **kwargs: Any) -> web.Application:
    """Build the emulator application (not yet listening).

    Args:
        settings: the configuration; ``EmulatorSettings.load()`` when omitted.
        **kwargs: passed to :class:`Engine` (``clock=``) for tests.
    """
    settings = settings or EmulatorSettings.load()
    middlewares = [json_errors, check_host, require_key, queue_guard]
    if settings.tls_cert_file is not None:
        middlewares.insert(0, track_tls)
    app = web.Application(
        middlewares=middlewares,
        client_max_size=max(settings.runsync_max_bytes, settings.result_max_bytes) + 64 * 1024,
    )
    app[TLS_CONNECTIONS] = TlsConnections()
    engine = Engine(settings, **kwargs)
    app[SETTINGS] = settings
    app[ENGINE] = engine
    app[KEYRING] = KeyRing(settings.accepted_keys())
    app[LIMITER] = RateLimiter(settings.rate_limits, settings.rate_window_s, engine.now)
    app[IN_FLIGHT] = ConcurrencyLimiter(settings.concurrency_limits)
    fleet = Fleet(engine)
    webhooks = WebhookSender(engine)

    async def lifecycle(_app: web.Application) -> Any:
        await webhooks.start()
        await fleet.start()
        yield
        await fleet.stop()
        await webhooks.stop()
        for transport in list(app[TLS_CONNECTIONS].transports):
            transport.abort()

    app.cleanup_ctx.append(lifecycle)
    admin_graphql.setup(app)
    admin_rest.setup(app)  # before the queue API: /v2/serverless/{id} vs /v2/{endpoint_id}/…
    queue_api.setup(app)
    worker_api.setup(app)
    app.router.add_get("/_emulator/stats", stats)
    app.router.add_get("/_emulator/stats/{endpoint_id}", stats)
    app.router.add_get("/_emulator/jobs/{endpoint_id}", jobs)
    app.router.add_get("/_emulator/workers/{endpoint_id}", workers)
    app.router.add_put("/_emulator/faults/{endpoint_id}", set_faults)
    app.router.add_post("/_emulator/faults/{endpoint_id}", set_faults)
    app.router.add_post("/_emulator/keys/revoke", revoke_key)
    return app


def tls_context(settings: EmulatorSettings) -> ssl.SSLContext | None:
    """The server's TLS context when a certificate is configured (https), else None."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


async def start_site(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Start listening (TLS with ``ssl_context``); returns the runner and the bound port
    (useful with port 0)."""
    # Cancel a handler whose client went away (long-polls of dead workers), and do not
    # wait a minute for open long-polls when shutting down.
    runner = web.AppRunner(
        app,
        access_log_class=_AccessLogger,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=2.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:  # a busy port: leave no session or socket behind
        await runner.cleanup()
        raise
    server = site._server  # aiohttp exposes the bound sockets only here
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)


async def serve(settings: EmulatorSettings, ready: Callable[[int], None] | None = None) -> None:
    """Run the emulator until cancelled."""
    settings.check_bind()
    app = create_app(settings)
    runner, port = await start_site(app, settings.host, settings.port, tls_context(settings))
    if ready is not None:
        ready(port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
