"""Sans-IO wire rules of the queue API, each written once.

Paths, request bodies (the ``{"input": ...}`` wrapping), headers, response parsing, the
HTTP status → error mapping and the final states live here. Nothing in this module does
I/O: the sync and asyncio shells turn a :class:`Request` into bytes on a socket and hand
back a :class:`Response`; the waiting/retrying logic built on top is in ``_flows``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from bridge.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    InvalidInputError,
    JobCancelled,
    JobError,
    JobFailed,
    JobTimedOut,
    NotFoundError,
    PayloadTooLargeError,
    ProtocolError,
    RateLimitedError,
    ServerError,
)
from bridge.runpod._config import USER_AGENT, Secret

IN_QUEUE: Final = "IN_QUEUE"
IN_PROGRESS: Final = "IN_PROGRESS"
COMPLETED: Final = "COMPLETED"
FAILED: Final = "FAILED"
CANCELLED: Final = "CANCELLED"
TIMED_OUT: Final = "TIMED_OUT"
FINAL_STATES: Final = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
"""Every state after which a job never changes on its own (CANCELLED included)."""

log = logging.getLogger("bridge.runpod")

DEFAULT_TIMEOUT: Final = 10.0
"""Read timeout, in seconds, of a request that the server answers at once."""

CONNECT_TIMEOUT: Final = 10.0
"""Seconds to establish a connection."""

HOLD_SLACK: Final = 5.0
"""Extra read time given to a request that asks the server to hold (``?wait=``)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where an endpoint's queue API lives: ``{base_url}/{endpoint_id}/...``."""

    base_url: str
    endpoint_id: str

    def url(self, op: str, job_id: str | None = None) -> str:
        """The URL of operation ``op`` (``run``, ``status``, ...), optionally for a job."""
        path = f"{self.base_url}/{quote(self.endpoint_id, safe='')}/{op}"
        return f"{path}/{quote(job_id, safe='')}" if job_id is not None else path


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request to send, fully decided.

    Attributes:
        op: the operation name (``run``, ``status-sync``, ...), for logs and retry rules.
        idempotent: whether sending it twice is harmless (decides which failures retry).
        job_id: the job it concerns, for error context.
    """

    method: str
    url: str
    op: str
    endpoint_id: str
    params: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    timeout: float = DEFAULT_TIMEOUT
    idempotent: bool = True
    job_id: str | None = None

    def headers(self, secret: Secret | None) -> dict[str, str]:
        """Headers for this request; the key goes here and nowhere else."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret.reveal()}"
        if self.content is not None:
            headers["Content-Type"] = "application/json"
        return headers


@dataclass(frozen=True, slots=True)
class Response:
    """What came back: status code, raw body, and the ``Retry-After`` header if any."""

    status_code: int
    body: bytes
    retry_after: str | None = None

    @classmethod
    def received(
        cls, status_code: int, body: bytes, retry_after: str | None, secret: Secret | None
    ) -> Response:
        """Build a response, masking the key should an error body ever echo it."""
        if status_code >= 400 and secret is not None and secret.reveal().encode() in body:
            body = secret.redact(body.decode("utf-8", "replace")).encode()
        return cls(status_code, body, retry_after)


def log_exchange(request: Request, outcome: Response | Exception) -> None:
    """One debug line per request sent, the same from both flavours (never any header)."""
    if log.isEnabledFor(logging.DEBUG):
        result = outcome.status_code if isinstance(outcome, Response) else type(outcome).__name__
        query = "&".join(f"{k}={v}" for k, v in sorted(request.params.items()))
        url = f"{request.url}?{query}" if query else request.url
        log.debug("%s %s -> %s", request.method, url, result)


def build_body(
    request_input: Any,
    *,
    webhook: str | None = None,
    policy: Mapping[str, Any] | None = None,
    s3_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``/run`` and ``/runsync``.

    A dict with an ``input`` key is taken as the full body (whatever the value, even
    ``{}`` or ``0``); anything else is the input itself and gets wrapped. Explicit
    ``webhook`` / ``policy`` / ``s3_config`` arguments are merged in and win.
    """
    if isinstance(request_input, Mapping) and "input" in request_input:
        body = dict(request_input)
    else:
        body = {"input": request_input}
    extras = {"webhook": webhook, "policy": policy, "s3Config": s3_config}
    body.update({key: value for key, value in extras.items() if value is not None})
    return body


def _encode(body: Any) -> bytes:
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"request input is not JSON-serialisable: {err}") from err


def run_request(
    target: Target, body: Mapping[str, Any], *, sync_wait: float | None = None
) -> Request:
    """``POST /run``, or ``POST /runsync?wait=`` when ``sync_wait`` (seconds) is given."""
    if sync_wait is None:
        return Request(
            "POST",
            target.url("run"),
            "run",
            target.endpoint_id,
            content=_encode(body),
            idempotent=False,
        )
    return Request(
        "POST",
        target.url("runsync"),
        "runsync",
        target.endpoint_id,
        params={"wait": str(int(sync_wait * 1000))},
        content=_encode(body),
        timeout=sync_wait + HOLD_SLACK,
        idempotent=False,
    )


def job_request(
    target: Target,
    op: str,
    job_id: str,
    *,
    hold: float | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Request:
    """A request about one job: ``status``, ``status-sync``, ``stream``, ``cancel``, ``retry``.

    ``hold`` (seconds) asks the server to hold the answer (``?wait=``) until something
    changes; the read timeout is stretched to match.
    """
    method = "GET" if op in {"status", "status-sync", "stream"} else "POST"
    params = {"wait": str(int(hold * 1000))} if hold is not None else {}
    if hold is not None:
        timeout = hold + HOLD_SLACK
    # /retry re-queues a job: sending it twice is not harmless. /cancel is.
    return Request(
        method,
        target.url(op, job_id),
        op,
        target.endpoint_id,
        params=params,
        timeout=timeout,
        idempotent=op != "retry",
        job_id=job_id,
    )


def endpoint_request(target: Target, op: str, *, timeout: float = 3.0) -> Request:
    """``GET /health`` or ``POST /purge-queue``."""
    if op == "health":
        return Request("GET", target.url(op), op, target.endpoint_id, timeout=timeout)
    # A purge answers with a count of removed jobs: a repeat would misreport it.
    return Request(
        "POST", target.url(op), op, target.endpoint_id, timeout=timeout, idempotent=False
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), else None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _server_message(response: Response) -> str:
    text = response.body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or f"HTTP {response.status_code} with an empty body"
    if isinstance(data, dict):
        # Queue API: {"error"}; REST v1: {"message"}; REST v2 (RFC 9457): {"title","detail"}.
        for key in ("error", "message", "detail", "title"):
            if data.get(key):
                value = data[key]
                return value if isinstance(value, str) else json.dumps(value)[:300]
    return text[:300]


_ERRORS: Final[Mapping[int, type[APIError]]] = {
    400: BadRequestError,
    422: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    413: PayloadTooLargeError,
}


def error_for(request: Request, response: Response) -> APIError:
    """The typed error for an HTTP error status, carrying the server's message."""
    message = _server_message(response)
    code, endpoint_id, job_id = response.status_code, request.endpoint_id, request.job_id
    if code == 429:
        retry_after = parse_retry_after(response.retry_after)
        return RateLimitedError(
            message, retry_after=retry_after, endpoint_id=endpoint_id, job_id=job_id
        )
    kind = ServerError if code >= 500 else _ERRORS.get(code, APIError)
    return kind(message, status_code=code, endpoint_id=endpoint_id, job_id=job_id)


def parse(request: Request, response: Response) -> Any:
    """The decoded JSON of a success reply; raises the mapped error for any other status."""
    if not 200 <= response.status_code < 300:
        raise error_for(request, response)
    if response.status_code == 204 or not response.body.strip():
        return {}
    try:
        return json.loads(response.body)
    except ValueError as err:
        snippet = response.body[:80].decode("utf-8", "replace")
        raise ProtocolError(
            f"{request.op}: HTTP {response.status_code} reply is not JSON: {snippet!r}",
            endpoint_id=request.endpoint_id,
            job_id=request.job_id,
        ) from err


def parse_job(request: Request, response: Response) -> dict[str, Any]:
    """A job object (``/run``, ``/runsync``, ``/status``...): a dict with ``id``/``status``."""
    data = parse(request, response)
    required = ("id", "status") if request.op in {"run", "runsync"} else ("status",)
    if not isinstance(data, dict) or any(not isinstance(data.get(k), str) for k in required):
        raise ProtocolError(
            f"{request.op}: reply has no {' / '.join(required)}: {str(data)[:120]}",
            endpoint_id=request.endpoint_id,
            job_id=request.job_id,
        )
    return data


def chunk_output(chunk: Any) -> Any:
    """The value a stream chunk carries: ``{"output": x}`` → ``x``; anything else as is."""
    return chunk["output"] if isinstance(chunk, dict) and "output" in chunk else chunk


def _describe(error: Any) -> str:
    # Handler exceptions arrive as a JSON-encoded string with error_type / error_message.
    if isinstance(error, str):
        try:
            decoded = json.loads(error)
        except ValueError:
            return error
        error = decoded
    if isinstance(error, dict) and "error_message" in error:
        kind = error.get("error_type") or "error"
        return f"{kind}: {error['error_message']}"
    return str(error) if error is not None else "no error message"


def job_outcome(job: Mapping[str, Any], *, endpoint_id: str, job_id: str) -> Any:
    """The output of a COMPLETED job; the typed :class:`JobError` for any other final state."""
    state = job.get("status")
    if state == COMPLETED:
        return job.get("output")
    kinds: dict[str, tuple[type[JobError], str]] = {
        FAILED: (JobFailed, f"job failed: {_describe(job.get('error'))}"),
        CANCELLED: (JobCancelled, "job was cancelled"),
        TIMED_OUT: (JobTimedOut, "job timed out on the endpoint"),
    }
    if state not in kinds:
        raise ValueError(f"job state {state!r} is not final")
    kind, message = kinds[str(state)]
    if state == CANCELLED and job.get("error"):
        message = f"job was cancelled: {job['error']}"
    raise kind(
        message,
        status=str(state),
        endpoint_id=endpoint_id,
        job_id=job_id,
        error=job.get("error"),
        job=dict(job),
    )
