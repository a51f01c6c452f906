"""Blocking client: :class:`Endpoint` and :class:`Job` over httpx.

Only I/O lives here; every decision is made by the sans-IO flows in ``_flows``.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import httpx

from bridge.errors import ConnectError, ReadTimeoutError, TransportError
from bridge.runpod import _flows as flows
from bridge.runpod import _protocol as wire
from bridge.runpod._config import Secret, resolve_endpoint_base, resolve_key
from bridge.runpod._policy import PollPolicy, RetryPolicy, Runtime, deadline_after

T = TypeVar("T")

_lock = threading.Lock()
_shared: tuple[int, httpx.Client] | None = None


def _shared_client() -> httpx.Client:
    # One pooled client per process, like a module-level requests.Session: Endpoint and
    # Job objects are cheap and never hold sockets of their own unless given a client.
    global _shared
    with _lock:
        if _shared is None or _shared[0] != os.getpid():
            client = httpx.Client(follow_redirects=False)
            atexit.register(client.close)
            _shared = (os.getpid(), client)
        return _shared[1]


def _transport_error(request: wire.Request, error: httpx.TransportError) -> TransportError:
    message = f"{request.op}: {type(error).__name__}: {error}"
    where = {"endpoint_id": request.endpoint_id, "job_id": request.job_id}
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return ConnectError(message, **where)
    if isinstance(error, httpx.ReadTimeout):
        return ReadTimeoutError(message, **where)
    return TransportError(message, **where)


class _Driver:
    """Sends requests with httpx and drives flows; shared by an Endpoint and its Jobs."""

    def __init__(
        self,
        client: httpx.Client | None,
        secret: Secret | None,
        runtime: Runtime,
    ) -> None:
        self.client = client or _shared_client()
        self.secret = secret
        self.runtime = runtime

    def send(self, request: wire.Request) -> wire.Response | TransportError:
        timeout = httpx.Timeout(request.timeout, connect=wire.CONNECT_TIMEOUT, pool=None)
        try:
            reply = self.client.request(
                request.method,
                request.url,
                params=dict(request.params),
                content=request.content,
                headers=request.headers(self.secret),
                timeout=timeout,
            )
        except httpx.TransportError as error:
            failure = _transport_error(request, error)
            wire.log_exchange(request, failure)
            return failure
        response = wire.Response.received(
            reply.status_code, reply.content, reply.headers.get("Retry-After"), self.secret
        )
        wire.log_exchange(request, response)
        return response

    def drive(self, flow: flows.Flow[T]) -> Iterator[flows.Emit | flows.Done[T]]:
        reply: flows.Reply = None
        while True:
            try:
                step = flow.send(reply)
            except StopIteration as stop:
                yield flows.Done(stop.value)
                return
            reply = None
            if isinstance(step, flows.Send):
                reply = self.send(step.request)
            elif isinstance(step, flows.Sleep):
                time.sleep(step.seconds)
            else:
                yield step

    def run(self, flow: flows.Flow[T]) -> T:
        for step in self.drive(flow):
            if isinstance(step, flows.Done):
                return step.value
        raise AssertionError("a flow ended without a result")  # pragma: no cover


def _runtime(retry: RetryPolicy | None, poll: PollPolicy | None) -> Runtime:
    return Runtime(retry=retry or RetryPolicy(), poll=poll or PollPolicy())


class Endpoint:
    """Blocking client of one queue endpoint.

    Args:
        endpoint_id: the endpoint to talk to.
        api_key: wins over ``bridge.runpod.api_key`` and ``RUNPOD_API_KEY``.
        base_url: queue API base; wins over ``bridge.runpod.endpoint_url_base``.
        client: an ``httpx.Client`` to send with (closed by its owner); by default a
            pooled client shared by the whole process.
        retry: when failed requests are re-sent.
        poll: how waiting for a job polls or holds.
    """

    def __init__(
        self,
        endpoint_id: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._target = wire.Target(resolve_endpoint_base(base_url), endpoint_id)
        self._driver = _Driver(client, resolve_key(api_key), _runtime(retry, poll))

    @property
    def base_url(self) -> str:
        """The queue API base this endpoint's URLs start with."""
        return self._target.base_url

    def __repr__(self) -> str:
        return f"Endpoint({self.endpoint_id!r}, base_url={self.base_url!r})"

    def run(
        self,
        request_input: Any,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> Job:
        """Submit a job (``POST /run``) and return it without waiting.

        Args:
            request_input: the job input, or a full body if it is a dict with an ``input``
                key.
            webhook: URL the platform calls when the job ends.
            policy: ``executionTimeout`` / ``lowPriority`` / ``ttl`` overrides.
            s3_config: bucket credentials handed to the worker (sent as ``s3Config``).

        Returns:
            The submitted job.
        """
        body = wire.build_body(request_input, webhook=webhook, policy=policy, s3_config=s3_config)
        state = self._driver.run(flows.submit(self._target, body, self._driver.runtime))
        return Job._attach(state, self._driver)

    def run_sync(
        self,
        request_input: Any,
        timeout: float = 86400,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> Any:
        """Submit a job (``POST /runsync?wait=``) and wait for its output.

        Args:
            request_input: as for :meth:`run`.
            timeout: seconds to wait in all (0: no limit).

        Returns:
            The output of the COMPLETED job.

        Raises:
            JobFailed, JobCancelled, JobTimedOut: the job ended otherwise.
            WaitTimeout: ``timeout`` passed first (``job_id`` is set once known).
        """
        rt = self._driver.runtime
        deadline = deadline_after(timeout, rt)
        body = wire.build_body(request_input, webhook=webhook, policy=policy, s3_config=s3_config)
        return self._driver.run(flows.run_sync(self._target, body, rt, deadline=deadline))

    def run_held(
        self,
        request_input: Any,
        timeout: float = 0,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> Job:
        """Submit through ``POST /runsync?wait=`` and return the job, finished or not.

        The server holds the request while the job runs (up to 90 s, less with a
        ``timeout``), so a short job comes back final in one round trip; a longer one is
        returned unfinished, to be waited on like any other job.

        Args:
            request_input: as for :meth:`run`.
            timeout: seconds the hold may last at most (0: the platform's 90 s).

        Returns:
            The job; ``output()`` on it answers at once when it already ended.
        """
        rt = self._driver.runtime
        deadline = deadline_after(timeout, rt)
        body = wire.build_body(request_input, webhook=webhook, policy=policy, s3_config=s3_config)
        flow = flows.submit_held(self._target, body, rt, deadline=deadline)
        state = self._driver.run(flow)
        return Job._attach(state, self._driver)

    def health(self, timeout: float = 3) -> dict[str, Any]:
        """Worker and job counts of the endpoint (``GET /health``)."""
        request = wire.endpoint_request(self._target, "health", timeout=timeout)
        reply: dict[str, Any] = self._driver.run(flows.call(request, self._driver.runtime))
        return reply

    def purge_queue(self, timeout: float = 3) -> dict[str, Any]:
        """Remove every job still queued (``POST /purge-queue``); running jobs go on."""
        request = wire.endpoint_request(self._target, "purge-queue", timeout=timeout)
        reply: dict[str, Any] = self._driver.run(flows.call(request, self._driver.runtime))
        return reply

    def job(self, job_id: str) -> Job:
        """Re-attach to a job of this endpoint by its id."""
        return Job._attach(flows.JobState(self._target, job_id), self._driver)


class Job(flows.JobView):
    """A job of a queue endpoint, blocking flavour.

    Args:
        endpoint_id: the endpoint the job was submitted to.
        job_id: the job's id.
        api_key, base_url, client, retry, poll: as for :class:`Endpoint`.
    """

    def __init__(
        self,
        endpoint_id: str,
        job_id: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
    ) -> None:
        target = wire.Target(resolve_endpoint_base(base_url), endpoint_id)
        self._state = flows.JobState(target, job_id)
        self._driver = _Driver(client, resolve_key(api_key), _runtime(retry, poll))

    @classmethod
    def _attach(cls, state: flows.JobState, driver: _Driver) -> Job:
        job = cls.__new__(cls)
        job._state, job._driver = state, driver
        return job

    def status(self) -> dict[str, Any]:
        """The job's whole status object, freshly read (``status``, ``output``, ``error``,
        ``delayTime``, ``executionTime``, ``workerId`` as the endpoint sends them)."""
        return self._driver.run(flows.status(self._state, self._driver.runtime))

    def output(self, timeout: float = 0) -> Any:
        """Wait for the job and return its output.

        Args:
            timeout: seconds to wait at most, on a monotonic clock (0: no limit).

        Raises:
            JobFailed, JobCancelled, JobTimedOut, JobExpired: the job did not complete.
            WaitTimeout: ``timeout`` passed first; the job may still be running.
        """
        rt = self._driver.runtime
        deadline = deadline_after(timeout, rt)
        return self._driver.run(flows.output(self._state, rt, deadline=deadline))

    def stream(self) -> Iterator[Any]:
        """Yield each streamed chunk's output once, as it comes; end on any final state."""
        for step in self._driver.drive(flows.stream(self._state, self._driver.runtime)):
            if isinstance(step, flows.Emit):
                yield step.value

    def cancel(self, timeout: float = 3) -> dict[str, Any]:
        """Cancel the job (``POST /cancel``); a job already final is left as it is."""
        flow = flows.control(self._state, "cancel", self._driver.runtime, timeout=timeout)
        return self._driver.run(flow)

    def retry(self, timeout: float = 10) -> dict[str, Any]:
        """Re-queue a FAILED or TIMED_OUT job under the same id (``POST /retry``)."""
        flow = flows.control(self._state, "retry", self._driver.runtime, timeout=timeout)
        return self._driver.run(flow)
