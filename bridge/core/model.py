"""Plain data every part passes around: a request, its Celery continuation, its outcome,
and the final states, defined once (the endpoint's own come from the client's protocol
module)."""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Final

from bridge.runpod._protocol import (
    CANCELLED,
    COMPLETED,
    FAILED,
    TIMED_OUT,
)
from bridge.runpod._protocol import (
    FINAL_STATES as JOB_FINAL_STATES,
)

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "EXPIRED",
    "FAILED",
    "FINAL_STATES",
    "JOB_FINAL_STATES",
    "REJECTED",
    "TIMED_OUT",
    "Admitted",
    "Continuation",
    "Outcome",
    "Refusal",
    "Request",
]

EXPIRED: Final = "EXPIRED"
"""Bridge-side: the endpoint no longer knows the job (its result is gone)."""

REJECTED: Final = "REJECTED"
"""Bridge-side: the request was refused before anything was submitted."""

FINAL_STATES: Final = JOB_FINAL_STATES | {EXPIRED, REJECTED}
"""Every status a final reply can carry."""


@dataclass
class Continuation:
    """What Celery would have done after the ``bridge.run`` task: its chain, links and
    error links, taken over so they run when the GPU job ends, not when the task does."""

    task_id: str
    root_id: str | None = None
    parent_id: str | None = None
    chain: list[dict[str, Any]] | None = None
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None


@dataclass
class Request:
    """One accepted request, whichever door it came through."""

    id: str
    route: str
    input: dict[str, Any]
    mode: str
    reply_to: str | None = None
    policy: dict[str, Any] | None = None
    webhook: str | None = None
    s3_config: dict[str, Any] | None = None
    deadline_s: float | None = None
    continuation: Continuation | None = None
    accepted_at: float = field(default_factory=time.time)

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    @property
    def door(self) -> str:
        return "celery" if self.continuation is not None else "json"

    @property
    def task_id(self) -> str | None:
        return self.continuation.task_id if self.continuation is not None else None

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict. Shallow on purpose: the input is not copied (a copy would
        recurse through it, and a deeply nested input is refused at the door anyway)."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.continuation is not None:
            record["continuation"] = {
                f.name: getattr(self.continuation, f.name) for f in fields(Continuation)
            }
        return record

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Request:
        """From :meth:`to_record`'s dict; fields a newer version added are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        continuation = values.pop("continuation", None)
        if isinstance(continuation, dict):
            names = {f.name for f in fields(Continuation)}
            values["continuation"] = Continuation(
                **{k: v for k, v in continuation.items() if k in names}
            )
        return cls(**values)

    def body(self) -> dict[str, Any]:
        """The ``/run`` body: ``input`` plus the RunPod options given."""
        body: dict[str, Any] = {"input": self.input}
        if self.policy:
            body["policy"] = self.policy
        if self.webhook:
            body["webhook"] = self.webhook
        if self.s3_config:
            body["s3Config"] = self.s3_config
        return body


@dataclass
class Outcome:
    """How a request ended.

    Attributes:
        status: one of :data:`FINAL_STATES`.
        output: the job's output (``has_output`` says whether there is one).
        error: the endpoint's error, for FAILED.
        reason: machine-readable cause for bridge-side endings and cancellations
            (``deadline``, ``purged``, ``cancelled``, ``unauthorized`` …).
        message: a sentence for people, for bridge-side endings.
        job: the last status object read from the endpoint (timings, worker id).
        submissions: how many times ``/run`` may have created a job for the request.
        dead_letter: the ending needs a person: it is also written to the dead letters.
        history: what was tried, for the dead letter.
    """

    status: str
    output: Any = None
    has_output: bool = False
    error: Any = None
    reason: str | None = None
    message: str | None = None
    job_id: str | None = None
    job: dict[str, Any] = field(default_factory=dict)
    submissions: int = 0
    dead_letter: bool = False
    history: list[str] = field(default_factory=list)

    @classmethod
    def from_job(cls, job: dict[str, Any], *, reason: str | None = None) -> Outcome:
        status = str(job.get("status"))
        if status == CANCELLED and job.get("error") == "purged":
            reason = reason or "purged"
        return cls(
            status=status,
            output=job.get("output"),
            has_output="output" in job,
            error=job.get("error"),
            reason=reason,
            job_id=job.get("id"),
            job=job,
        )

    def reply(self, request_id: str, route: str, accepted_at: float) -> dict[str, Any]:
        """The final JSON reply (``type: "result"``)."""
        reply: dict[str, Any] = {"type": "result", "id": request_id, "status": self.status}
        if self.has_output:
            reply["output"] = self.output
        if self.error is not None:
            reply["error"] = self.error
        if self.reason is not None:
            reply["reason"] = self.reason
        if self.message is not None:
            reply["message"] = self.message
        reply["job_id"] = self.job_id
        reply["route"] = route
        reply["submissions"] = self.submissions
        timings: dict[str, int] = {"total_ms": max(0, round((time.time() - accepted_at) * 1000))}
        for ours, theirs in (("delay_ms", "delayTime"), ("execution_ms", "executionTime")):
            if isinstance(self.job.get(theirs), int):
                timings[ours] = self.job[theirs]
        reply["timings"] = timings
        return reply


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused before it was accepted (bad input, unknown route, a bad reply
    target, a taken id), with what could be read of it.

    Attributes:
        reason: machine-readable (``invalid_envelope``, ``unknown_route`` …).
        message: what is wrong, for a person (never the offending values).
        request_id: the request's id, when one could be read.
        route: its route, when known.
        reply_to: where the refusal may be answered; None when it may not be written
            (absent, or a key the bridge or Celery owns).
        payload: what was received, for the dead letter.
        continuation: the Celery task to fail (Celery door).
    """

    reason: str
    message: str
    request_id: str | None = None
    route: str = ""
    reply_to: str | None = None
    payload: str = ""
    continuation: Continuation | None = None


class Admitted(enum.Enum):
    """What became of a request handed over for following."""

    ACCEPTED = "accepted"
    """Recorded; it is followed to its end."""
    CANCELLED = "cancelled"
    """Recorded, and a cancel had come first: it is answered, never submitted."""
    DUPLICATE = "duplicate"
    """The same request again (a redelivery): nothing to do."""
    CONFLICT = "conflict"
    """The id is taken by a different request: refuse this one on its reply list."""
    CONFLICT_UNANSWERED = "conflict_unanswered"
    """The same, but its reply list is the holder's: refuse it without a reply there."""
    DEFERRED = "deferred"
    """Its endpoint's breaker is open: not recorded; try again later."""
