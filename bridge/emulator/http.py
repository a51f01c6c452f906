"""HTTP plumbing shared by the emulator's routes: app keys, JSON errors, body parsing."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web

from bridge.emulator.engine import Engine
from bridge.emulator.settings import EmulatorSettings

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
SETTINGS: web.AppKey[EmulatorSettings] = web.AppKey("settings", EmulatorSettings)
KEY_ID: web.RequestKey[str] = web.RequestKey("key_id", str)
"""The id of the API key a request was authenticated with (never the key itself)."""


class ApiError(Exception):
    """Raised by a route to answer ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


REST_ADMIN = "/v2/serverless"
"""Where REST v2's admin API lives; its errors are problem documents."""


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """An RFC 9457 problem document, as REST v2 answers errors."""
    body = {"title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    return web.json_response(
        body, status=status, content_type="application/problem+json", headers=headers
    )


def refusal(
    request: web.Request, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in the form the route's API uses: a problem document under REST v2's
    admin paths, ``{"error": message}`` elsewhere."""
    if request.path == REST_ADMIN or request.path.startswith(REST_ADMIN + "/"):
        return problem(status, message, headers)
    return error_response(status, message, headers)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def ok(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


async def read_json(
    request: web.Request, *, max_bytes: int, required: bool = True, any_type: bool = False
) -> Any:
    """Parse the request body as JSON; an empty body is ``None`` unless ``required``.

    A body must be declared ``application/json`` (415 otherwise): a web page can send a
    form or ``text/plain`` anywhere without asking, but not JSON. Only the worker
    protocol passes ``any_type`` (RunPod's worker sends JSON labelled as a form).
    """
    if not any_type and request.body_exists and not is_json(request.content_type):
        raise ApiError(
            415,
            f"request body must be sent as Content-Type: application/json, "
            f"not {request.headers.get('Content-Type', 'none')!r}"[:300],
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, f"request body is {request.content_length} bytes; max is {max_bytes}")
    raw = await request.read()
    if len(raw) > max_bytes:
        raise ApiError(413, f"request body is {len(raw)} bytes; max is {max_bytes}")
    if not raw.strip():
        if required:
            raise ApiError(400, "request body is empty; expected a JSON object")
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


async def read_bounded(request: web.Request, max_bytes: int) -> bytes | None:
    """The raw body, or None when it is longer than ``max_bytes`` (then not read whole:
    a declared length says so at once, a chunked body is read only up to the limit)."""
    if request.content_length is not None and request.content_length > max_bytes:
        return None
    raw = await request.content.read(max_bytes + 1)
    while len(raw) <= max_bytes and not request.content.at_eof():
        more = await request.content.read(max_bytes + 1 - len(raw))
        if not more:
            break
        raw += more
    return None if len(raw) > max_bytes else raw


def is_json(mimetype: str) -> bool:
    """``application/json`` or a ``+json`` type (parameters such as charset aside)."""
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def wait_ms(request: web.Request, default: int) -> int:
    """The ``?wait=`` parameter in milliseconds, bounded by the server's maximum."""
    raw = request.query.get("wait")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, f"wait must be an integer number of milliseconds, got {raw!r}"
        ) from None
    if value < 0:
        raise ApiError(400, f"wait must not be negative, got {value}")
    return min(value, request.app[SETTINGS].max_wait_ms)
