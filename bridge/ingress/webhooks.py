"""The webhook receiver: endpoints call it when a job ends; it only wakes the job's tracker.

A webhook is a hint, never a result. The URL we give the endpoint carries a secret
token made for that one request (``/webhook/{request_id}?token=...``), kept in the
request's record as a field of its own (one small read, whatever the request's size);
the receiver answers 404 to anything else, and for a genuine call it only publishes the
request id on the wake channel (purges have a channel of their own). The tracker that
holds the request then reads ``/status`` itself, so a forged call can neither inject an
output nor end a job early.

Run it with ``bridge webhooks`` (one process per host is enough; it is stateless) and
set ``BRIDGE_WEBHOOK_URL`` to the address the endpoint can reach it at.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from redis.asyncio import Redis

from bridge.core.keys import Keys
from bridge.core.ledger import Ledger
from bridge.ingress.envelope import REQUEST_ID

log = logging.getLogger("bridge.webhooks")

LEDGER: web.AppKey[Ledger] = web.AppKey("ledger", Ledger)
MAX_BODY = 1024
"""The body is never read (a webhook only wakes its request; RunPod's carries the job's
input and output, and only the token in the URL counts): were it read, no more than this."""


async def receive(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    request_id = request.match_info["request_id"]
    presented = request.query.get("token", "")
    expected = await ledger.token(request_id) if REQUEST_ID.fullmatch(request_id) else ""
    if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
        log.warning("webhook for unknown request or with a wrong token: ignored")
        return web.json_response({"error": "not found"}, status=404)
    await ledger.redis.publish(ledger.keys.wake_channel, request_id)
    return web.json_response({"ok": True})


async def health(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_receiver(redis: Redis, keys: Keys) -> web.Application:
    """The receiver app: ``POST /webhook/{request_id}?token=...`` and ``GET /healthz``."""
    app = web.Application(client_max_size=MAX_BODY)
    app[LEDGER] = Ledger(redis, keys)
    app.router.add_post("/webhook/{request_id}", receive)
    app.router.add_get("/healthz", health)
    return app
