"""The dead-letter stream, for operators: list, replay and purge its entries.

An entry holds the original request (``payload``: the JSON-door envelope as received,
or the accepted request's record; at most 64 KiB of it, ``payload_bytes`` its size), the
``reason`` and ``message``, the ``route``, the ``job_id`` if one was made, ``details``
(attempt history), the time, and for a request the ledger had accepted the ``finisher``
of its final reply: replay reopens that record, and only while it still holds that reply.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import redis

from bridge.core.connection import sync_redis
from bridge.core.keys import keys_for
from bridge.core.ledger import RELEASE_FOR_REPLAY
from bridge.core.scripts import text
from bridge.settings import BridgeSettings

ENTRY_ID = re.compile(r"^[0-9]{1,20}(-[0-9]{1,20})?$")
"""A Redis stream entry id (``<ms>-<seq>``, or ``<ms>``): XRANGE refuses anything else."""

_ENVELOPE_FIELDS = ("route", "input", "reply_to", "mode", "policy", "webhook", "deadline_s")


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    reason: str
    message: str
    request_id: str
    route: str
    job_id: str
    payload: str
    details: dict[str, Any]
    at: float
    finisher: str = ""
    truncated: bool = False

    @classmethod
    def from_fields(cls, entry_id: Any, fields: Any) -> DeadLetter:
        """From a raw stream entry (redis-py returns bytes)."""

        def text(name: str) -> str:
            value = (fields or {}).get(name.encode(), b"")
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

        try:
            details = json.loads(text("details") or "{}")
        except ValueError:
            details = {}
        return cls(
            entry_id=entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id),
            reason=text("reason"),
            message=text("message"),
            request_id=text("request_id"),
            route=text("route"),
            job_id=text("job_id"),
            payload=text("payload"),
            details=details if isinstance(details, dict) else {},
            at=float(text("at") or 0),
            finisher=text("finisher"),
            truncated=text("truncated") == "1",
        )

    def envelope(self, payload: str | None = None) -> dict[str, Any] | None:
        """The request as a JSON-door envelope, or None if the payload is not one."""
        try:
            data = json.loads(payload if payload is not None else self.payload)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("input"), dict):
            return None
        envelope = {k: data[k] for k in _ENVELOPE_FIELDS if data.get(k) is not None}
        if data.get("s3_config") or data.get("s3Config"):
            envelope["s3Config"] = data.get("s3_config") or data.get("s3Config")
        envelope["id"] = self.request_id or data.get("id")
        return {k: v for k, v in envelope.items() if v is not None}


class DeadLetters:
    """Operations on the dead-letter stream (blocking Redis client: for the CLI)."""

    def __init__(self, settings: BridgeSettings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or sync_redis(settings.redis_url, settings.sentinel_master)
        self.stream = settings.dlq_stream

    def list(self, route: str | None = None, limit: int = 100) -> list[DeadLetter]:
        entries: Any = self.redis.xrange(self.stream)
        letters = [DeadLetter.from_fields(i, f) for i, f in entries]
        if route is not None:
            letters = [d for d in letters if d.route == route]
        return letters[-limit:] if limit else letters

    def get(self, entry_id: str) -> DeadLetter | None:
        found: Any = self.redis.xrange(self.stream, entry_id, entry_id)
        return DeadLetter.from_fields(*found[0]) if found else None

    def replay(self, letter: DeadLetter) -> str:
        """Send the request again through the JSON door, under the same request id.

        A request the ledger had accepted keeps its final record until replayed: replay
        forgets that record first, but only while it still holds the reply this dead
        letter names (never another request that took the id since). A refused envelope
        touched no record: it is simply sent again (refused again as ``duplicate_id`` if
        its id is taken meanwhile). Returns the id; ValueError when it cannot be replayed.
        """
        payload: str | None = None
        if letter.finisher and letter.request_id:
            keys = keys_for(self.settings)
            state, recorded = RELEASE_FOR_REPLAY.bind(self.redis)(
                req=keys.request(letter.request_id), finisher=letter.finisher
            )
            if text(state) == "taken":
                raise ValueError(
                    f"entry {letter.entry_id}: request id {letter.request_id} now holds "
                    "another request; not replayed"
                )
            payload = text(recorded) or None
        elif letter.truncated:
            raise ValueError(f"entry {letter.entry_id} holds only the start of its request")
        envelope = letter.envelope(payload)
        if envelope is None:
            raise ValueError(
                f"entry {letter.entry_id} holds no replayable request ({letter.reason})"
            )
        self.redis.xadd(self.settings.requests_stream, {"payload": json.dumps(envelope)})
        self.redis.xdel(self.stream, letter.entry_id)
        return str(envelope.get("id") or "")

    def purge(self, route: str | None = None) -> int:
        """Remove entries (all, or one route's); returns how many."""
        if route is None:
            count = int(self.redis.xlen(self.stream))
            self.redis.delete(self.stream)
            return count
        ids = [d.entry_id for d in self.list(route, limit=0)]
        if ids:
            self.redis.xdel(self.stream, *ids)
        return len(ids)
