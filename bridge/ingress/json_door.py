"""The JSON door: a Redis stream read through a consumer group, for producers in any
language (``XADD bridge:requests * payload '<envelope>'``).

An entry is acknowledged, and deleted from the stream, once its request is recorded in
the ledger (or it was answered, if refused), so a crash never loses an accepted request
and the stream holds no more than the entries still being handled. No entry can stop the
door: an exception while handling one dead-letters that one (``internal_error``) and the
door goes on; an entry that was being handled when its process died is counted, and
after ``max_entry_failures`` such deaths it is dead-lettered unread. Reading pauses while
the process already holds more waiting requests than it should.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.core.keys import Keys
from bridge.core.ledger import Ledger
from bridge.core.lifecycle import summary
from bridge.core.model import Admitted, Refusal, Request
from bridge.ingress.admission import Admission
from bridge.ingress.envelope import CancelMessage
from bridge.settings import BridgeSettings

log = logging.getLogger("bridge.json_door")


Accept = Callable[[Request], Awaitable[Admitted]]
Refuse = Callable[[Refusal], Awaitable[None]]
DeadLetter = Callable[..., Awaitable[None]]

_STORE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class JsonDoor:
    """Consumes the request stream for this process.

    Args:
        redis: the bridge's Redis.
        settings: stream and group names, limits.
        keys: the key schema.
        ledger: for cancel messages.
        admission: turns entries into requests or refusals.
        accept: hands a request over for following (returns once it is recorded; a
            request whose id is taken is refused there).
        refuse: answers and dead-letters a refusal.
        dead_letter: writes a dead letter (for entries that broke their handling).
        backlog: how many accepted requests wait for a slot in this process.
        consumer: this process' consumer name.
        max_backlog: stop reading while the backlog is at least this.
    """

    def __init__(
        self,
        redis: Redis,
        settings: BridgeSettings,
        keys: Keys,
        ledger: Ledger,
        admission: Admission,
        *,
        accept: Accept,
        refuse: Refuse,
        dead_letter: DeadLetter,
        backlog: Callable[[], int],
        consumer: str,
        max_backlog: int = 1000,
        batch: int = 100,
        block_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys
        self.ledger = ledger
        self.admission = admission
        self.stream = keys.requests_stream
        # Its own routes' hand-off streams: entries other workers read but cannot serve.
        self.streams = [keys.requests_stream, *(keys.route_stream(r) for r in settings.routes)]
        self.group = settings.consumer_group
        self.consumer = consumer
        self.failures_key = keys.door_failures
        self._accept = accept
        self._refuse = refuse
        self._dead_letter = dead_letter
        self._backlog = backlog
        self.max_backlog = max_backlog
        self.batch = batch
        self.block_ms = block_ms
        self.alive_at = time.monotonic()
        """When the door last completed a read (its health)."""

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self) -> None:
        """Read and dispatch until cancelled; Redis outages are waited out."""
        await self.ensure_groups()
        pending_first = True  # entries this consumer read before a restart come first
        next_claim = time.monotonic()
        while True:
            self.alive_at = time.monotonic()
            # The backlog is a counter in the tracker, with no event to wait on.
            while self._backlog() >= self.max_backlog:
                await asyncio.sleep(0.05)
                self.alive_at = time.monotonic()
            try:
                start = "0" if pending_first else ">"
                replies = await self.redis.xreadgroup(
                    self.group, self.consumer, dict.fromkeys(self.streams, start),
                    count=self.batch, block=None if pending_first else self.block_ms,
                )  # fmt: skip
                batches = _entries(replies)
                if pending_first and not any(entries for _, entries in batches):
                    pending_first = False
                    continue
                for stream, entries in batches:
                    await self.handle_batch(stream, entries, reread=pending_first)
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self.settings.stale_entry_s / 2
                    for stream in self.streams:
                        await self._claim_stale(stream)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_groups()
            except _STORE_ERRORS as exc:
                # Unacknowledged entries stay pending and are read again.
                log.warning("reading %s failed (%s); retrying", self.stream, exc)
                pending_first = True
                await asyncio.sleep(1.0)

    async def _claim_stale(self, stream: str) -> None:
        """Entries another consumer read but never acknowledged (it died while handling
        them, or they wait for an open breaker) are taken over and handled here; the
        ledger's claim makes a second handling of one that was recorded harmless."""
        idle_ms = int(self.settings.stale_entry_s * 1000)
        reply = await self.redis.xautoclaim(
            stream, self.group, self.consumer, idle_ms, "0-0", count=self.batch
        )
        entries = [(i, f) for i, f in (reply[1] if len(reply) > 1 else []) if f]
        gone = [i for i, f in (reply[1] if len(reply) > 1 else []) if not f]
        if gone:  # deleted from the stream: nothing left to handle
            await self.redis.xack(stream, self.group, *gone)
        await self.handle_batch(stream, entries, reread=True)

    async def handle_batch(
        self,
        stream: str,
        entries: list[tuple[bytes, dict[bytes, bytes]]],
        *,
        reread: bool = False,
    ) -> None:
        """Handle entries in stream order; acknowledge and delete the handled ones
        together. A run of consecutive new requests is handled together, started in
        order: their claims go to Redis in that order, in one pipeline (see
        :mod:`bridge.core.scripts`). Refusals and cancels are handled one by one, in
        order, so their replies keep the stream's order. ``reread`` entries were
        delivered before: each is counted while it is handled, so one that kills its
        process is recognised the next time."""
        done: list[bytes] = []
        run: list[tuple[bytes, dict[bytes, bytes], Request]] = []
        try:
            for entry_id, fields in entries:
                parsed = None if reread else self._parse(entry_id, fields)
                if isinstance(parsed, Request):
                    run.append((entry_id, fields, parsed))
                    continue
                await self._together(run, done)
                if await self._handle_one(entry_id, fields, reread, parsed):
                    done.append(entry_id)
            await self._together(run, done)
        finally:
            if done:
                pipe = self.redis.pipeline(transaction=False)
                pipe.xack(stream, self.group, *done)
                pipe.xdel(stream, *done)
                await pipe.execute()

    def _parse(
        self, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> Request | CancelMessage | Refusal | None:
        try:
            return self.admission.from_entry(entry_id.decode(), fields)
        except Exception:  # parsed again, and dead-lettered, by _handle_one
            return None

    async def _together(
        self, run: list[tuple[bytes, dict[bytes, bytes], Request]], done: list[bytes]
    ) -> None:
        """Handle a run of new requests together; a Redis outage leaves its entries
        pending (read again) and is raised once the others are done."""
        if not run:
            return
        results = await asyncio.gather(
            *(
                self._handle_one(entry_id, fields, False, parsed)
                for entry_id, fields, parsed in run
            ),
            return_exceptions=True,
        )
        failure: BaseException | None = None
        for (entry_id, _, _), result in zip(run, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
            elif result:
                done.append(entry_id)
        run.clear()
        if failure is not None:
            raise failure

    async def _handle_one(
        self,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        reread: bool,
        parsed: Request | CancelMessage | Refusal | None = None,
    ) -> bool:
        """Handle one entry (``parsed`` already, or not yet); True when it may be
        acknowledged."""
        eid = entry_id.decode()
        if reread:
            deaths = int(await self.redis.hincrby(self.failures_key, eid, 1)) - 1
            if deaths >= self.settings.max_entry_failures:
                await self._poisoned(eid, fields, f"its handling stopped its worker {deaths} "
                                     "times")  # fmt: skip
                await self.redis.hdel(self.failures_key, eid)
                return True
        try:
            handled = await self._dispatch(eid, fields, parsed)
        except _STORE_ERRORS:
            raise  # left pending: read again once Redis answers
        except Exception as exc:  # one entry never stops the door
            log.exception("entry %s broke its handling; dead-lettered", eid)
            await self._poisoned(eid, fields, summary(exc))
            handled = True
        if reread:
            await self.redis.hdel(self.failures_key, eid)
        return handled

    async def _dispatch(
        self,
        entry_id: str,
        fields: dict[bytes, bytes],
        parsed: Request | CancelMessage | Refusal | None = None,
    ) -> bool:
        if parsed is None:
            parsed = self.admission.from_entry(entry_id, fields)
        if isinstance(parsed, Refusal):
            if parsed.reason == "unknown_route" and await self._served_elsewhere(parsed.route):
                # Another live worker serves that route: hand the entry to it.
                handed: dict[Any, Any] = dict(fields)
                await self.redis.xadd(self.keys.route_stream(parsed.route), handed)
                return True
            await self._refuse(parsed)
        elif isinstance(parsed, CancelMessage):
            state = await self.ledger.request_cancel(parsed.id)
            log.info("cancel for request %s (%s)", parsed.id, state)
        else:
            if await self._accept(parsed) is Admitted.DEFERRED:
                return False  # unacknowledged: claimed again once stale
        return True

    async def _served_elsewhere(self, route: str) -> bool:
        """Whether a live worker serves ``route`` (workers say so with their lease)."""
        if not route or not self.settings.route_handoff:
            return False
        seen = await self.redis.hget(self.keys.serving, route)
        return seen is not None and time.time() - float(seen) < self.settings.lease_ttl_s

    async def _poisoned(self, entry_id: str, fields: dict[bytes, bytes], why: str) -> None:
        payload = (fields.get(b"payload") or b"").decode("utf-8", "replace")
        await self._dead_letter(
            reason="internal_error",
            message=f"stream entry {entry_id}: {why}",
            request_id=None,
            payload=payload,
        )


Entries = list[tuple[bytes, dict[bytes, bytes]]]


def _entries(replies: Any) -> list[tuple[str, Entries]]:
    """An XREADGROUP reply as ``(stream, entries)`` pairs (RESP2 list or RESP3 dict)."""
    if not replies:
        return []
    if isinstance(replies, dict):
        return [(_name(k), list(v[0])) for k, v in replies.items()]
    return [(_name(k), list(v)) for k, v in replies]


def _name(stream: Any) -> str:
    return stream.decode() if isinstance(stream, bytes) else str(stream)
