"""The request envelope, shared by both doors, and the parser of raw JSON-door messages.

A JSON-door message is a Redis stream entry whose ``payload`` field holds the envelope
as JSON. Parsing never raises: a message is either a valid :class:`Envelope` or
:class:`CancelMessage`, or a :class:`~bridge.core.model.Refusal` with a reason a person
can act on (and the request id and reply list when they could be read, so the sender can
be answered). Limits hold before anything deep happens: the size is checked before the
JSON is decoded; ``NaN`` and ``Infinity`` (and numbers too large for a float, like
``1e999``) and nesting deeper than ``max_depth`` are refused right after decoding, before
the envelope is validated or copied, with the request's id and reply list when given.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.core.model import Refusal
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


DEFAULT_MAX_DEPTH = 64
"""Deepest nesting of lists and objects accepted (``BRIDGE_MAX_INPUT_DEPTH``)."""


def json_problem(value: Any, max_depth: int) -> str | None:
    """What in ``value`` cannot travel as JSON to an endpoint (None: nothing): nesting
    of ``max_depth`` levels or more, a float that is NaN or infinite, a key that is not
    a string, or a value of another type. Walks iteratively: no recursion, whatever the
    depth."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= max_depth:
                return f"nesting deeper than {max_depth - 1} levels"
            for key, child in item.items():
                if not isinstance(key, str):
                    return "an object key that is not a string"
                stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            if depth >= max_depth:
                return f"nesting deeper than {max_depth - 1} levels"
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "NaN or Infinity (not numbers JSON allows)"
        elif not (item is None or isinstance(item, str | int | bool)):
            return f"a value of type {type(item).__name__} (not JSON)"
    return None


def parse_payload(
    raw: bytes | str | None, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH
) -> Envelope | CancelMessage | Refusal:
    """Turn a JSON-door payload into an envelope, a cancel, or a refusal. Never raises.
    A refusal's ``reply_to`` is the one the payload names (the caller vets it)."""
    if raw is None:
        return Refusal("invalid_message", "the stream entry has no 'payload' field")
    # surrogatepass: a str may hold lone surrogates (JSON allows them escaped)
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > max_bytes:
        return Refusal("payload_too_large", f"payload is {size} bytes; the limit is {max_bytes}")
    try:
        # NaN, Infinity and 1e999 decode (to floats JSON cannot carry) so that the
        # refusal below can name the request and answer it; json_problem refuses them.
        data = json.loads(raw)
    # ValueError also covers numbers over Python's int digit limit and invalid UTF-8
    except (ValueError, RecursionError) as exc:
        return Refusal("invalid_json", f"payload is not valid JSON: {_short(exc)}")
    if not isinstance(data, dict):
        return Refusal("invalid_envelope", "payload must be a JSON object (the envelope)")
    request_id = _safe(data.get("id"), REQUEST_ID)
    reply_to = _safe(data.get("reply_to"), REPLY_KEY)
    problem = json_problem(data, max_depth + 1)  # the envelope is one level above input
    if problem is not None:
        return Refusal("invalid_input", f"the envelope holds {problem}", request_id,
                       reply_to=reply_to)  # fmt: skip
    try:
        if data.get("type") == "cancel":
            return CancelMessage.model_validate(data)
        return Envelope.model_validate(data)
    except ValidationError as exc:
        return Refusal("invalid_envelope", describe(exc), request_id, reply_to=reply_to)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
