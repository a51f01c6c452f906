"""The request envelope, shared by both doors, and the parser of raw JSON-door messages.

A JSON-door message is a Redis stream entry whose ``payload`` field holds the envelope
as JSON. Parsing never raises: a message is either a valid :class:`Envelope` or
:class:`CancelMessage`, or a :class:`Rejection` with a reason a person can act on (and
the request id and reply list when they could be read, so the sender can be answered).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.settings import Mode

REPLY_KEY = re.compile(r"^[A-Za-z0-9:_.\-/{}]{1,256}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9:_.\-]{1,200}$")


class Policy(BaseModel):
    """RunPod's per-job policy, in milliseconds (``executionTimeout``, ``ttl``)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "yes" is not a boolean

    executionTimeout: int | None = Field(None, gt=0)
    lowPriority: bool | None = None
    ttl: int | None = Field(None, gt=0)


class Envelope(BaseModel):
    """One inference request, as a producer sends it.

    Attributes:
        id: idempotency key; a request with an id already seen is not submitted again.
            Generated when absent.
        route: the configured route to send it to (or give ``endpoint_id``).
        endpoint_id: an endpoint id some route sends to, instead of ``route``.
        input: the handler's input, a JSON object.
        reply_to: a Redis list that receives the stream chunks and the final result.
        mode: ``poll``, ``stream``, ``sync`` or ``webhook``; the route's default if absent.
        policy: RunPod policy for this job; the route's default if absent.
        webhook: a URL RunPod should also notify (not with mode ``webhook``).
        s3Config: passed to the endpoint untouched.
        deadline_s: give up (cancel, ``TIMED_OUT``) after this many seconds.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    type: Literal["request"] = "request"
    id: str | None = Field(None, pattern=REQUEST_ID.pattern)
    route: str | None = Field(None, min_length=1, max_length=200)
    endpoint_id: str | None = Field(None, min_length=1, max_length=200)
    input: dict[str, Any]
    reply_to: str | None = Field(None, pattern=REPLY_KEY.pattern)
    mode: Mode | None = None
    policy: Policy | None = None
    webhook: str | None = Field(None, pattern=r"^https?://", max_length=2048)
    s3Config: dict[str, Any] | None = None
    deadline_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _consistent(self) -> Envelope:
        if self.route is None and self.endpoint_id is None:
            raise ValueError("give 'route' (or 'endpoint_id')")
        if self.mode == "webhook" and self.webhook is not None:
            raise ValueError("'webhook' cannot be combined with mode 'webhook'")
        return self


class CancelMessage(BaseModel):
    """``{"type": "cancel", "id": "<request id>"}``: cancel a request through the JSON door."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["cancel"]
    id: str = Field(pattern=REQUEST_ID.pattern)


@dataclass(frozen=True)
class Rejection:
    """Why a message was refused, with what could be read of it."""

    reason: str
    message: str
    request_id: str | None = None
    reply_to: str | None = None


def parse_payload(
    raw: bytes | str | None, *, max_bytes: int
) -> Envelope | CancelMessage | Rejection:
    """Turn a JSON-door payload into an envelope, a cancel, or a rejection. Never raises."""
    if raw is None:
        return Rejection("invalid_message", "the stream entry has no 'payload' field")
    # surrogatepass: a str may hold lone surrogates (JSON allows them escaped)
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > max_bytes:
        return Rejection("payload_too_large", f"payload is {size} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(raw)
    # ValueError also covers numbers over Python's int digit limit (not a JSONDecodeError)
    except (ValueError, RecursionError) as exc:
        return Rejection("invalid_json", f"payload is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return Rejection("invalid_envelope", "payload must be a JSON object (the envelope)")
    request_id = _safe(data.get("id"), REQUEST_ID)
    reply_to = _safe(data.get("reply_to"), REPLY_KEY)
    try:
        if data.get("type") == "cancel":
            return CancelMessage.model_validate(data)
        return Envelope.model_validate(data)
    except ValidationError as exc:
        return Rejection("invalid_envelope", describe(exc), request_id, reply_to)


def describe(exc: ValidationError) -> str:
    """A short, readable account of what is wrong (never the offending values)."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "envelope"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _safe(value: Any, pattern: re.Pattern[str]) -> str | None:
    return value if isinstance(value, str) and pattern.fullmatch(value) else None
