"""The JSON door: a Redis stream read through a consumer group, for producers in any
language (``XADD bridge:requests * payload '<envelope>'``).

An entry is acknowledged once its request is recorded in the ledger (or answered, if
it was refused), so a crash never loses an accepted request. A bad entry is answered
when it names a ``reply_to``, dead-lettered either way, and never stops the consumer.
Reading pauses while the process already holds more waiting requests than it should.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bridge.errors import RequestRejected
from bridge.ingress.envelope import CancelMessage, Envelope, Rejection, parse_payload
from bridge.settings import BridgeSettings
from bridge.worker.ledger import Ledger
from bridge.worker.model import Request

log = logging.getLogger("bridge.json_door")

Accept = Callable[[Request], Awaitable[str]]
Reject = Callable[[Rejection, dict[bytes, bytes]], Awaitable[None]]
RouteOpen = Callable[[str], Awaitable[float]]


class _Deferred(Exception):
    """The route's endpoint is down (breaker open): leave the entry in the stream."""


def to_request(envelope: Envelope, settings: BridgeSettings) -> Request:
    """Resolve an envelope's route and defaults into a request (raises RequestRejected)."""
    request_id = envelope.id or Request.new_id()
    route_name = envelope.route
    if route_name is None:
        matches = [n for n, r in settings.routes.items() if r.endpoint_id == envelope.endpoint_id]
        if not matches:
            raise RequestRejected(
                f"no route sends to endpoint {envelope.endpoint_id!r}", "unknown_endpoint",
                request_id,
            )  # fmt: skip
        route_name = matches[0]
    if route_name not in settings.routes:
        known = ", ".join(sorted(settings.routes))
        raise RequestRejected(
            f"unknown route {route_name!r} (configured: {known})", "unknown_route", request_id
        )
    route = settings.routes[route_name]
    policy = envelope.policy.model_dump(exclude_none=True) if envelope.policy else route.policy
    return Request(
        id=request_id,
        route=route_name,
        input=envelope.input,
        mode=envelope.mode or route.mode,
        reply_to=envelope.reply_to,
        policy=policy or None,
        webhook=envelope.webhook,
        s3_config=envelope.s3Config,
        deadline_s=envelope.deadline_s,
    )


def check_size(size: int, request: Request, settings: BridgeSettings) -> None:
    """Refuse a request larger than its route allows (RequestRejected)."""
    limit = settings.routes[request.route].max_payload_bytes
    if size > limit:
        raise RequestRejected(
            f"request is {size} bytes; route {request.route!r} takes at most {limit}",
            "payload_too_large",
            request.id,
        )


class JsonDoor:
    """Consumes the request stream for this process.

    Args:
        redis: the bridge's Redis.
        settings: stream and group names, routes.
        ledger: for cancel messages.
        accept: hands a request to the tracker (returns once it is recorded).
        reject: answers and dead-letters a refused entry.
        backlog: how many accepted requests wait for a slot in this process.
        max_backlog: stop reading while the backlog is at least this.
    """

    def __init__(
        self,
        redis: Redis,
        settings: BridgeSettings,
        ledger: Ledger,
        *,
        accept: Accept,
        reject: Reject,
        backlog: Callable[[], int],
        route_open: RouteOpen | None = None,
        max_backlog: int = 1000,
        batch: int = 100,
        block_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.ledger = ledger
        self.stream = settings.requests_stream
        self.group = settings.consumer_group
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self._accept = accept
        self._reject = reject
        self._backlog = backlog
        self._route_open = route_open
        self.max_backlog = max_backlog
        self.batch = batch
        self.block_ms = block_ms
        self.max_bytes = max(r.max_payload_bytes for r in settings.routes.values())

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Read and dispatch until cancelled; Redis outages are waited out."""
        await self.ensure_group()
        pending_first = True  # entries this consumer read before a restart come first
        next_claim = time.monotonic()
        while True:
            # The backlog is a counter in the tracker, with no event to wait on.
            while self._backlog() >= self.max_backlog:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            try:
                start = "0" if pending_first else ">"
                replies = await self.redis.xreadgroup(
                    self.group, self.consumer, {self.stream: start},
                    count=self.batch, block=None if pending_first else self.block_ms,
                )  # fmt: skip
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self.ensure_group()
                    continue
                raise
            except (RedisError, OSError) as exc:
                log.warning("reading %s failed (%s); retrying", self.stream, exc)
                await asyncio.sleep(1.0)
                continue
            entries = _entries(replies)
            if pending_first and not entries:
                pending_first = False
                continue
            try:
                for entry_id, fields in entries:
                    await self.handle(entry_id, fields)
            except (RedisError, OSError) as exc:
                # Unacknowledged entries stay pending and are read again (see _claim_stale).
                log.warning("handling entries failed (%s); going on", exc)
                pending_first = True
                await asyncio.sleep(1.0)
                continue
            if time.monotonic() >= next_claim:
                next_claim = time.monotonic() + self.settings.stale_entry_s / 2
                await self._claim_stale()

    async def _claim_stale(self) -> None:
        """Entries another consumer read but never acknowledged (it died between reading
        and recording them) are taken over and handled here; the ledger's claim makes a
        second handling of one that was recorded harmless."""
        idle_ms = int(self.settings.stale_entry_s * 1000)
        try:
            reply = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, idle_ms, "0-0", count=self.batch
            )
        except (RedisError, OSError) as exc:
            log.warning("claiming stale entries failed: %s", exc)
            return
        for entry_id, fields in reply[1] if len(reply) > 1 else []:
            if fields:  # an entry deleted from the stream comes back empty
                await self.handle(entry_id, fields)
            else:
                await self.redis.xack(self.stream, self.group, entry_id)

    async def handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Dispatch one entry, then acknowledge it. Never raises for a bad entry."""
        parsed = parse_payload(fields.get(b"payload"), max_bytes=self.max_bytes)
        try:
            await self._dispatch(parsed, fields)
        except _Deferred:
            return  # unacknowledged: read again once stale (see _claim_stale)
        except RequestRejected as exc:
            await self._reject(
                Rejection(exc.reason, exc.message, exc.request_id, _reply(parsed)), fields
            )
        await self.redis.xack(self.stream, self.group, entry_id)

    async def _dispatch(self, parsed: Any, fields: dict[bytes, bytes]) -> None:
        if isinstance(parsed, Rejection):
            await self._reject(parsed, fields)
        elif isinstance(parsed, CancelMessage):
            state = await self.ledger.request_cancel(parsed.id)
            log.info("cancel for request %s (%s)", parsed.id, state)
        else:
            request = to_request(parsed, self.settings)
            check_size(len(fields.get(b"payload") or b""), request, self.settings)
            if self._route_open is not None and await self._route_open(request.route) > 0:
                raise _Deferred(request.route)
            await self._accept(request)


def _entries(replies: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of an XREADGROUP reply for one stream (RESP2 list or RESP3 dict)."""
    if not replies:
        return []
    if isinstance(replies, dict):
        return list(next(iter(replies.values()))[0])
    return list(replies[0][1])


def _reply(parsed: Any) -> str | None:
    return parsed.reply_to if isinstance(parsed, Envelope) else None
