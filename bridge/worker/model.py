"""Plain data the worker passes around: a request, its Celery continuation, its outcome."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
EXPIRED = "EXPIRED"
REJECTED = "REJECTED"
FINAL_STATES = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT, EXPIRED, REJECTED})


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
    webhook_token: str | None = None

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Request:
        data = dict(data)
        continuation = data.pop("continuation", None)
        return cls(**data, continuation=Continuation(**continuation) if continuation else None)

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
            (``deadline``, ``purged``, ``cancelled``, ``unknown_route`` …).
        message: a sentence for people, for bridge-side endings.
        job: the last status object read from the endpoint (timings, worker id).
    """

    status: str
    output: Any = None
    has_output: bool = False
    error: Any = None
    reason: str | None = None
    message: str | None = None
    job_id: str | None = None
    job: dict[str, Any] = field(default_factory=dict)
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
        timings: dict[str, int] = {"total_ms": max(0, round((time.time() - accepted_at) * 1000))}
        for ours, theirs in (("delay_ms", "delayTime"), ("execution_ms", "executionTime")):
            if isinstance(self.job.get(theirs), int):
                timings[ours] = self.job[theirs]
        reply["timings"] = timings
        return reply
