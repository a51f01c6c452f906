"""One error tree for the whole package.

::

    BridgeError
    ├── ConfigError                      bad configuration (file, route, field named)
    ├── RequestRejected                  the bridge refused a request (``reason`` says why)
    └── RunpodError                      anything the endpoint client raises
        ├── InvalidInputError            the input cannot be sent as JSON (NaN, Infinity,
        │                                objects): nothing was sent (also a TypeError)
        ├── APIError                     the server answered with an HTTP error status
        │   ├── BadRequestError          400 / 422: the request itself is wrong
        │   ├── AuthenticationError      401 / 403: missing, wrong or under-scoped key
        │   ├── NotFoundError            404: unknown endpoint, or unknown / expired job
        │   ├── PayloadTooLargeError     413: body over the endpoint's limit
        │   ├── RateLimitedError  (R)    429: carries ``retry_after`` seconds when sent
        │   └── ServerError       (R)    5xx
        ├── TransportError        (R)    the request did not complete at the HTTP level
        │   ├── ConnectError      (R)    provably never reached the server
        │   └── ReadTimeoutError  (R)    sent, no answer in time (also a TimeoutError)
        ├── ProtocolError                a 2xx reply we cannot understand (not JSON, no id)
        ├── AdminError                   the admin API (GraphQL / REST) reported an error
        ├── WaitTimeout                  our own deadline passed; the job may still run
        │                                (also a TimeoutError; carries ``job_id``)
        └── JobError                     the job reached a final state other than COMPLETED
            ├── JobFailed                FAILED, with the endpoint's ``error``
            ├── JobCancelled             CANCELLED (also purged jobs)
            ├── JobTimedOut              TIMED_OUT on the endpoint (also a TimeoutError)
            └── JobExpired               the endpoint no longer knows the job (404)

(R) marks the recoverable errors, collected in :data:`RETRYABLE_ERRORS`: the client's
retry policy uses that tuple, and the bridge's lifecycle (``bridge.core.lifecycle``)
classifies every error it meets as transient, permanent or unknown from this tree.

Errors carry context (endpoint id, job id, HTTP status, the server's message) and never
an API key: messages are built from fields that cannot hold one.
"""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(BridgeError, ValueError):
    """The configuration is invalid; the message names the source and the field."""


class RunpodError(BridgeError):
    """Base of the endpoint client's errors.

    Args:
        message: what went wrong, for a person.
        endpoint_id: the endpoint the call was for, when known.
        job_id: the job the call was for, when known.
    """

    def __init__(
        self, message: str, *, endpoint_id: str | None = None, job_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint_id = endpoint_id
        self.job_id = job_id

    def __str__(self) -> str:
        where = [f"{k}={v}" for k, v in (("endpoint", self.endpoint_id), ("job", self.job_id)) if v]
        return f"{self.message} ({', '.join(where)})" if where else self.message


class InvalidInputError(RunpodError, TypeError):
    """The request input cannot be encoded as JSON (``NaN``, ``Infinity``, a Python
    object); nothing was sent."""


class APIError(RunpodError):
    """The server answered with an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        endpoint_id: str | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(message, endpoint_id=endpoint_id, job_id=job_id)
        self.status_code = status_code

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {super().__str__()}"


class BadRequestError(APIError):
    """400 or 422: the request is malformed or refused as invalid."""


class AuthenticationError(APIError):
    """401 or 403: the API key is missing, wrong, or lacks the needed scope."""


class NotFoundError(APIError):
    """404: unknown endpoint id, or a job id the endpoint does not know (any more)."""


class PayloadTooLargeError(APIError):
    """413: the request body is over the endpoint's limit."""


class RateLimitedError(APIError):
    """429: too many requests; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 429,
        retry_after: float | None = None,
        endpoint_id: str | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, endpoint_id=endpoint_id, job_id=job_id)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx: the server failed; the same request may succeed later."""


class TransportError(RunpodError):
    """The HTTP exchange did not complete (connection refused or reset, timeout)."""


class ConnectError(TransportError):
    """The connection could not be made: the request provably never reached the server."""


class ReadTimeoutError(TransportError, TimeoutError):
    """The request was sent but no answer came in time; it may have been processed."""


class ProtocolError(RunpodError):
    """A success reply whose body we cannot understand (not JSON, missing fields)."""


class AdminError(RunpodError):
    """The admin API (GraphQL or REST) answered with errors."""


class WaitTimeout(RunpodError, TimeoutError):
    """Our own deadline passed before the job ended; the job may still be running.

    ``job_id`` is set so the caller can re-attach (``endpoint.job(job_id)``) or cancel.
    """


class JobError(RunpodError):
    """The job reached a final state other than COMPLETED.

    Every argument may be given by position, so the error survives a round trip
    through Celery's result backend (which rebuilds it as ``cls(*args)``).

    Attributes:
        status: the final state (``FAILED``, ``CANCELLED``, ``TIMED_OUT``, or ``EXPIRED``).
        error: the endpoint's error value, if it gave one.
        output: any output the job returned alongside its error.
        job: the full status object last read from the endpoint.
    """

    default_status = "FAILED"

    def __init__(
        self,
        message: str,
        status: str | None = None,
        endpoint_id: str | None = None,
        job_id: str | None = None,
        error: Any = None,
        job: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, endpoint_id=endpoint_id, job_id=job_id)
        self.status = status or self.default_status
        self.error = error
        self.job = job or {}
        self.output = self.job.get("output")
        self.args = (message, self.status, endpoint_id, job_id, error)


class JobFailed(JobError):
    """The job ended FAILED; ``error`` holds the endpoint's error."""


class JobCancelled(JobError):
    """The job ended CANCELLED (by a cancel request or a queue purge)."""

    default_status = "CANCELLED"


class JobTimedOut(JobError, TimeoutError):
    """The job ended TIMED_OUT: the endpoint's execution timeout, or the bridge's deadline."""

    default_status = "TIMED_OUT"


class JobExpired(JobError):
    """The endpoint no longer knows the job: its result expired or it was deleted."""

    default_status = "EXPIRED"


class RequestRejected(BridgeError):
    """The bridge refused the request before submitting it (bad input, unknown route).

    Args:
        message: what is wrong, for a person.
        reason: a machine-readable reason (``invalid_envelope``, ``unknown_route`` …).
        request_id: the request, when known.
    """

    def __init__(
        self, message: str, reason: str = "invalid_request", request_id: str | None = None
    ) -> None:
        super().__init__(message, reason, request_id)
        self.message = message
        self.reason = reason
        self.request_id = request_id

    def __str__(self) -> str:
        return f"request rejected ({self.reason}): {self.message}"


RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    RateLimitedError,
    ServerError,
    TransportError,
)
"""Errors after which the same request may succeed; used by every retry policy."""

__all__ = [
    "RETRYABLE_ERRORS",
    "APIError",
    "AdminError",
    "AuthenticationError",
    "BadRequestError",
    "BridgeError",
    "ConfigError",
    "ConnectError",
    "InvalidInputError",
    "JobCancelled",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobTimedOut",
    "NotFoundError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RateLimitedError",
    "ReadTimeoutError",
    "RequestRejected",
    "RunpodError",
    "ServerError",
    "TransportError",
    "WaitTimeout",
]
