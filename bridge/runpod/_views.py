"""What the blocking and asyncio classes share: the flows each call builds, the
properties they show, and their documentation. ``sync.py`` and ``asyncio.py`` only drive
the flows built here, so the two flavours cannot decide anything differently."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from bridge.runpod import _flows as flows
from bridge.runpod import _protocol as wire
from bridge.runpod._policy import Runtime, deadline_after

F = TypeVar("F", bound=Callable[..., Any])


class _Driven(Protocol):
    runtime: Runtime


class EndpointView:
    """An endpoint's flows and properties (its shells add the I/O)."""

    endpoint_id: str
    _target: wire.Target
    _driver: _Driven

    @property
    def base_url(self) -> str:
        """The queue API base this endpoint's URLs start with."""
        return self._target.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint_id!r}, base_url={self.base_url!r})"

    def _submit_flow(
        self,
        request_input: Any,
        webhook: str | None,
        policy: Mapping[str, Any] | None,
        s3_config: Mapping[str, Any] | None,
    ) -> flows.Flow[flows.JobState]:
        body = wire.build_body(request_input, webhook=webhook, policy=policy, s3_config=s3_config)
        return flows.submit(self._target, body, self._driver.runtime)

    def _run_sync_flow(
        self,
        request_input: Any,
        timeout: float,
        webhook: str | None,
        policy: Mapping[str, Any] | None,
        s3_config: Mapping[str, Any] | None,
    ) -> flows.Flow[Any]:
        rt = self._driver.runtime
        deadline = deadline_after(timeout, rt)
        body = wire.build_body(request_input, webhook=webhook, policy=policy, s3_config=s3_config)
        return flows.run_sync(self._target, body, rt, deadline=deadline)

    def _run_held_flow(
        self,
        request_input: Any,
        timeout: float,
        webhook: str | None,
        policy: Mapping[str, Any] | None,
        s3_config: Mapping[str, Any] | None,
    ) -> flows.Flow[flows.JobState]:
        rt = self._driver.runtime
        deadline = deadline_after(timeout, rt)
        body = wire.build_body(request_input, webhook=webhook, policy=policy, s3_config=s3_config)
        return flows.submit_held(self._target, body, rt, deadline=deadline)

    def _endpoint_flow(self, op: str, timeout: float) -> flows.Flow[Any]:
        request = wire.endpoint_request(self._target, op, timeout=timeout)
        return flows.call(request, self._driver.runtime)

    def _job_state(self, job_id: str) -> flows.JobState:
        return flows.JobState(self._target, job_id)


class JobView:
    """A job's flows and properties (its shells add the I/O)."""

    _state: flows.JobState
    _driver: _Driven

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self._state.job_id

    @property
    def endpoint_id(self) -> str:
        """The endpoint the job belongs to."""
        return self._state.target.endpoint_id

    @property
    def final_status(self) -> dict[str, Any] | None:
        """The whole status object of the job's final state, as last read (None while it
        runs): what ``output()`` decided on, with timings, without another request."""
        return self._state.final

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint_id!r}, {self.job_id!r})"

    def _status_flow(self) -> flows.Flow[dict[str, Any]]:
        return flows.status(self._state, self._driver.runtime)

    def _output_flow(self, timeout: float) -> flows.Flow[Any]:
        rt = self._driver.runtime
        return flows.output(self._state, rt, deadline=deadline_after(timeout, rt))

    def _stream_flow(self) -> flows.Flow[None]:
        return flows.stream(self._state, self._driver.runtime)

    def _control_flow(self, op: str, timeout: float) -> flows.Flow[dict[str, Any]]:
        return flows.control(self._state, op, self._driver.runtime, timeout=timeout)


_DOCS: dict[str, str] = {
    "run": """Submit a job (``POST /run``) and return it without waiting.

        Args:
            request_input: the job input, or a full body if it is a dict with an ``input``
                key (named ``endpoint_input`` in ``AsyncioEndpoint.run``, as in the SDK).
            webhook: URL the platform calls when the job ends.
            policy: ``executionTimeout`` / ``lowPriority`` / ``ttl`` overrides.
            s3_config: bucket credentials handed to the worker (sent as ``s3Config``).

        Returns:
            The submitted job.
        """,
    "run_sync": """Submit a job (``POST /runsync?wait=``) and wait for its output.

        Args:
            request_input: as for :meth:`run`.
            timeout: seconds to wait in all (0: no limit).
            webhook, policy, s3_config: as for :meth:`run`.

        Returns:
            The output of the COMPLETED job.

        Raises:
            JobFailed, JobCancelled, JobTimedOut: the job ended otherwise.
            WaitTimeout: ``timeout`` passed first (``job_id`` is set once known).
        """,
    "run_held": """Submit through ``POST /runsync?wait=`` and return the job, finished or not.

        The server holds the request while the job runs (up to 90 s, less with a
        ``timeout``), so a short job comes back final in one round trip; a longer one is
        returned unfinished, to be waited on like any other job.

        Args:
            request_input: as for :meth:`run`.
            timeout: seconds the hold may last at most (0: the platform's 90 s).
            webhook, policy, s3_config: as for :meth:`run`.

        Returns:
            The job; ``output()`` on it answers at once when it already ended.
        """,
    "health": """Worker and job counts of the endpoint (``GET /health``).""",
    "purge_queue": """Remove every job still queued (``POST /purge-queue``); running jobs
        go on.""",
    "job": """Re-attach to a job of this endpoint by its id.""",
    "status": """The job's whole status object, freshly read (``status``, ``output``,
        ``error``, ``delayTime``, ``executionTime``, ``workerId`` as the endpoint sends
        them).""",
    "output": """Wait for the job and return its output.

        Args:
            timeout: seconds to wait at most, on a monotonic clock (0: no limit).

        Raises:
            JobFailed, JobCancelled, JobTimedOut, JobExpired: the job did not complete.
            WaitTimeout: ``timeout`` passed first; the job may still be running.
        """,
    "stream": """Yield each streamed chunk's output once, as it comes; end on any final
        state.""",
    "cancel": """Cancel the job (``POST /cancel``); a job already final is left as it is.""",
    "retry": """Re-queue a FAILED or TIMED_OUT job under the same id (``POST /retry``).""",
}


def documented(func: F) -> F:
    """Give a shell's method the one docstring both flavours share (by its name)."""
    func.__doc__ = _DOCS[func.__name__]
    return func
