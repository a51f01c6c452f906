"""Admission: one set of rules that turns what either door received into a
:class:`~bridge.core.model.Request`, or a :class:`~bridge.core.model.Refusal` that says
why not. The JSON door hands it a stream entry, ``bridge.run`` its keyword arguments;
both end in :meth:`Admission.resolve`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from bridge.core.keys import reply_target_problem
from bridge.core.model import Continuation, Refusal, Request
from bridge.ingress.envelope import (
    REPLY_KEY,
    REQUEST_ID,
    CancelMessage,
    Envelope,
    describe,
    json_problem,
    parse_payload,
)
from bridge.settings import BridgeSettings

TASK_ARGUMENTS = ("route", "input", "mode", "request_id", "reply_to", "policy", "webhook",
                  "s3_config", "deadline_s", "endpoint_id")  # fmt: skip
"""The keyword arguments ``bridge.run`` takes."""


def task_arguments(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``bridge.run``'s arguments by name (positional ones in ``TASK_ARGUMENTS``' order),
    and what it does not take (refused by admission, with its names)."""
    arguments = dict(zip(TASK_ARGUMENTS, args, strict=False))
    arguments.update({k: v for k, v in kwargs.items() if k in TASK_ARGUMENTS})
    unexpected = sorted(set(kwargs) - set(TASK_ARGUMENTS))
    if len(args) > len(TASK_ARGUMENTS):
        unexpected.append("extra positional arguments")
    return arguments, unexpected


class Admission:
    """Admits or refuses requests for one deployment's settings.

    Args:
        settings: routes, limits, reply prefixes.
        webhook_url: the webhook receiver's base URL (mode ``webhook`` needs one).
    """

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.max_bytes = max((r.max_payload_bytes for r in settings.routes.values()), default=0)

    # -- the JSON door ----------------------------------------------------------------------

    def from_entry(
        self, entry_id: str, fields: dict[bytes, bytes]
    ) -> Request | CancelMessage | Refusal:
        """A stream entry's request, cancel or refusal. An envelope without an ``id`` gets
        the entry's id, so an entry read twice (after a crash) is the same request."""
        raw = fields.get(b"payload")
        parsed = parse_payload(
            raw, max_bytes=self.max_bytes, max_depth=self.settings.max_input_depth
        )
        payload = (raw or b"").decode("utf-8", "replace")
        if isinstance(parsed, Refusal):
            return self._vetted(dataclasses.replace(parsed, payload=payload))
        if isinstance(parsed, CancelMessage):
            return parsed
        return self.resolve(parsed, parsed.id or entry_id, len(raw or b""), payload)

    # -- the Celery door --------------------------------------------------------------------

    def from_task(
        self,
        arguments: dict[str, Any],
        unexpected: list[str],
        continuation: Continuation,
    ) -> Request | Refusal:
        """``bridge.run``'s keyword arguments as a request (its id: ``request_id``, else
        the task id). Wrong arguments never fail the task: they are refused."""
        request_id = arguments.get("request_id")
        safe_id = request_id if isinstance(request_id, str) and REQUEST_ID.fullmatch(
            request_id
        ) else None  # fmt: skip
        reply_to = arguments.get("reply_to")
        route = arguments.get("route")

        def refused(reason: str, message: str) -> Refusal:
            return self._vetted(Refusal(
                reason, message, safe_id or continuation.task_id,
                route=route if isinstance(route, str) else "",
                reply_to=reply_to if isinstance(reply_to, str) and REPLY_KEY.fullmatch(
                    reply_to) else None,
                payload=_dumps_safely(arguments), continuation=continuation,
            ))  # fmt: skip

        if unexpected:
            return refused("invalid_arguments", f"unexpected argument(s): {', '.join(unexpected)}")
        problem = json_problem(arguments, self.settings.max_input_depth + 1)
        if problem is not None:
            return refused("invalid_input", f"the arguments hold {problem}")
        fields = {
            "id": request_id,
            "route": route,
            "endpoint_id": arguments.get("endpoint_id"),
            "input": arguments.get("input"),
            "reply_to": reply_to,
            "mode": arguments.get("mode"),
            "policy": arguments.get("policy"),
            "webhook": arguments.get("webhook"),
            "s3Config": arguments.get("s3_config"),
            "deadline_s": arguments.get("deadline_s"),
        }
        try:
            envelope = Envelope.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            return refused("invalid_arguments", describe(exc))
        body_size = len(json.dumps(envelope.input, separators=(",", ":")))
        resolved = self.resolve(envelope, safe_id or continuation.task_id, body_size, "")
        if isinstance(resolved, Refusal):
            return dataclasses.replace(
                resolved, payload=_dumps_safely(arguments), continuation=continuation
            )
        resolved.continuation = continuation
        return resolved

    # -- both doors -------------------------------------------------------------------------

    def resolve(
        self, envelope: Envelope, request_id: str, size: int, payload: str
    ) -> Request | Refusal:
        """An envelope's route, defaults and limits applied: the request, or why not."""
        settings = self.settings

        def refuse(reason: str, message: str, route: str = "") -> Refusal:
            return self._vetted(Refusal(reason, message, request_id, route,
                                        envelope.reply_to, payload))  # fmt: skip

        if envelope.reply_to is not None:  # first: a refusal must not be written there
            route = settings.routes.get(envelope.route or "")
            problem = reply_target_problem(envelope.reply_to, settings, route)
            if problem is not None:
                return dataclasses.replace(
                    refuse("bad_reply_to", problem, envelope.route or ""), reply_to=None
                )  # answered nowhere
        route_name = envelope.route
        if route_name is None:
            matches = [n for n, r in settings.routes.items()
                       if r.endpoint_id == envelope.endpoint_id]  # fmt: skip
            if not matches:
                return refuse("unknown_endpoint",
                              f"no route sends to endpoint {envelope.endpoint_id!r}")  # fmt: skip
            route_name = matches[0]
        route = settings.routes.get(route_name)
        if route is None:
            known = ", ".join(sorted(settings.routes))
            message = f"unknown route {route_name!r} (configured: {known})"
            return refuse("unknown_route", message, route_name)
        if size > route.max_payload_bytes:
            return refuse(
                "payload_too_large",
                f"request is {size} bytes; route {route_name!r} takes at most "
                f"{route.max_payload_bytes}",
                route_name,
            )
        mode = envelope.mode or route.mode
        if mode == "webhook" and not settings.webhook_url:
            return refuse("webhook_unavailable",
                          "mode 'webhook' needs the webhook receiver: set BRIDGE_WEBHOOK_URL",
                          route_name)  # fmt: skip
        policy = envelope.policy.model_dump(exclude_none=True) if envelope.policy else route.policy
        return Request(
            id=request_id,
            route=route_name,
            input=envelope.input,
            mode=mode,
            reply_to=envelope.reply_to,
            policy=policy or None,
            webhook=envelope.webhook,
            s3_config=envelope.s3Config,
            deadline_s=envelope.deadline_s,
        )

    def _vetted(self, refusal: Refusal) -> Refusal:
        """A refusal answered only where its reply target may be written."""
        if refusal.reply_to is None:
            return refusal
        route = self.settings.routes.get(refusal.route)
        if reply_target_problem(refusal.reply_to, self.settings, route) is not None:
            return dataclasses.replace(refusal, reply_to=None)
        return refusal


def _dumps_safely(value: Any) -> str:
    try:
        return json.dumps(value, default=repr, allow_nan=True)[:65_536]
    except (ValueError, RecursionError):
        return "<arguments not representable as JSON>"
