"""Asyncio client: :class:`AsyncioEndpoint` and :class:`AsyncioJob` over aiohttp.

Only I/O lives here; every decision is made by the sans-IO flows in ``_flows``. The
caller owns the :class:`aiohttp.ClientSession` (see ``http_client.ClientSession``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, TypeVar

import aiohttp

from bridge.errors import ConnectError, ReadTimeoutError, TransportError
from bridge.runpod import _flows as flows
from bridge.runpod import _protocol as wire
from bridge.runpod._config import Secret, resolve_endpoint_base, resolve_key
from bridge.runpod._policy import PollPolicy, RetryPolicy, Runtime, deadline_after

T = TypeVar("T")


def _transport_error(request: wire.Request, error: Exception) -> TransportError:
    message = f"{request.op}: {type(error).__name__}: {error}"
    where = {"endpoint_id": request.endpoint_id, "job_id": request.job_id}
    if isinstance(error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return ConnectError(message, **where)
    if isinstance(error, TimeoutError):  # also aiohttp's read timeouts
        return ReadTimeoutError(message, **where)
    return TransportError(message, **where)


class _Driver:
    """Sends requests on an aiohttp session and drives flows; shared by an endpoint and
    its jobs."""

    def __init__(
        self, session: aiohttp.ClientSession, secret: Secret | None, runtime: Runtime
    ) -> None:
        self.session = session
        self.secret = secret
        self.runtime = runtime

    async def send(self, request: wire.Request) -> wire.Response | TransportError:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=wire.CONNECT_TIMEOUT, sock_read=request.timeout
        )
        try:
            async with self.session.request(
                request.method,
                request.url,
                params=dict(request.params),
                data=request.content,
                headers=request.headers(self.secret),
                timeout=timeout,
                raise_for_status=False,
                allow_redirects=False,
            ) as reply:
                body = await reply.read()
        except (TimeoutError, aiohttp.ClientError) as error:
            failure = _transport_error(request, error)
            wire.log_exchange(request, failure)
            return failure
        response = wire.Response.received(
            reply.status, body, reply.headers.get("Retry-After"), self.secret
        )
        wire.log_exchange(request, response)
        return response

    async def drive(self, flow: flows.Flow[T]) -> AsyncGenerator[flows.Emit | flows.Done[T]]:
        reply: flows.Reply = None
        while True:
            try:
                step = flow.send(reply)
            except StopIteration as stop:
                yield flows.Done(stop.value)
                return
            reply = None
            if isinstance(step, flows.Send):
                reply = await self.send(step.request)
            elif isinstance(step, flows.Sleep):
                await asyncio.sleep(step.seconds)
            else:
                yield step

    async def run(self, flow: flows.Flow[T]) -> T:
        async with aclosing(self.drive(flow)) as steps:
            async for step in steps:
                if isinstance(step, flows.Done):
                    return step.value
        raise AssertionError("a flow ended without a result")  # pragma: no cover


def _runtime(retry: RetryPolicy | None, poll: PollPolicy | None) -> Runtime:
    return Runtime(retry=retry or RetryPolicy(), poll=poll or PollPolicy())


class AsyncioEndpoint:
    """Asyncio client of one queue endpoint, on a caller-owned aiohttp session.

    Args:
        endpoint_id: the endpoint to talk to.
        session: the session to send on (``bridge.runpod.http_client.ClientSession()``
            or any ``aiohttp.ClientSession``); its owner closes it.
        api_key: wins over ``bridge.runpod.api_key`` and ``RUNPOD_API_KEY``.
        base_url: queue API base; wins over ``bridge.runpod.endpoint_url_base``.
        retry: when failed requests are re-sent.
        poll: how waiting for a job polls or holds.
    """

    def __init__(
        self,
        endpoint_id: str,
        session: aiohttp.ClientSession,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._target = wire.Target(resolve_endpoint_base(base_url), endpoint_id)
        self._driver = _Driver(session, resolve_key(api_key), _runtime(retry, poll))

    @property
    def base_url(self) -> str:
        """The queue API base this endpoint's URLs start with."""
        return self._target.base_url

    def __repr__(self) -> str:
        return f"AsyncioEndpoint({self.endpoint_id!r}, base_url={self.base_url!r})"

    async def run(
        self,
        endpoint_input: Any,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> AsyncioJob:
        """Submit a job (``POST /run``) and return it without waiting.

        Args:
            endpoint_input: the job input, or a full body if it is a dict with an
                ``input`` key.
            webhook: URL the platform calls when the job ends.
            policy: ``executionTimeout`` / ``lowPriority`` / ``ttl`` overrides.
            s3_config: bucket credentials handed to the worker (sent as ``s3Config``).

        Returns:
            The submitted job.
        """
        body = wire.build_body(endpoint_input, webhook=webhook, policy=policy, s3_config=s3_config)
        state = await self._driver.run(flows.submit(self._target, body, self._driver.runtime))
        return AsyncioJob._attach(state, self._driver)

    async def run_sync(
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
        return await self._driver.run(flows.run_sync(self._target, body, rt, deadline=deadline))

    async def run_held(
        self,
        request_input: Any,
        timeout: float = 0,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> AsyncioJob:
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
        state = await self._driver.run(flow)
        return AsyncioJob._attach(state, self._driver)

    async def health(self, timeout: float = 3) -> dict[str, Any]:
        """Worker and job counts of the endpoint (``GET /health``)."""
        request = wire.endpoint_request(self._target, "health", timeout=timeout)
        reply: dict[str, Any] = await self._driver.run(flows.call(request, self._driver.runtime))
        return reply

    async def purge_queue(self, timeout: float = 3) -> dict[str, Any]:
        """Remove every job still queued (``POST /purge-queue``); running jobs go on."""
        request = wire.endpoint_request(self._target, "purge-queue", timeout=timeout)
        reply: dict[str, Any] = await self._driver.run(flows.call(request, self._driver.runtime))
        return reply

    def job(self, job_id: str) -> AsyncioJob:
        """Re-attach to a job of this endpoint by its id."""
        return AsyncioJob._attach(flows.JobState(self._target, job_id), self._driver)


class AsyncioJob(flows.JobView):
    """A job of a queue endpoint, asyncio flavour.

    Args:
        endpoint_id: the endpoint the job was submitted to.
        job_id: the job's id.
        session: the aiohttp session to send on.
        api_key, base_url, retry, poll: as for :class:`AsyncioEndpoint`.
    """

    def __init__(
        self,
        endpoint_id: str,
        job_id: str,
        session: aiohttp.ClientSession,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
    ) -> None:
        target = wire.Target(resolve_endpoint_base(base_url), endpoint_id)
        self._state = flows.JobState(target, job_id)
        self._driver = _Driver(session, resolve_key(api_key), _runtime(retry, poll))

    @classmethod
    def _attach(cls, state: flows.JobState, driver: _Driver) -> AsyncioJob:
        job = cls.__new__(cls)
        job._state, job._driver = state, driver
        return job

    async def status(self) -> dict[str, Any]:
        """The job's whole status object, freshly read (``status``, ``output``, ``error``,
        ``delayTime``, ``executionTime``, ``workerId`` as the endpoint sends them)."""
        return await self._driver.run(flows.status(self._state, self._driver.runtime))

    async def output(self, timeout: float = 0) -> Any:
        """Wait for the job and return its output.

        Args:
            timeout: seconds to wait at most, on a monotonic clock (0: no limit).

        Raises:
            JobFailed, JobCancelled, JobTimedOut, JobExpired: the job did not complete.
            WaitTimeout: ``timeout`` passed first; the job may still be running.
        """
        rt = self._driver.runtime
        deadline = deadline_after(timeout, rt)
        return await self._driver.run(flows.output(self._state, rt, deadline=deadline))

    async def stream(self) -> AsyncIterator[Any]:
        """Yield each streamed chunk's output once, as it comes; end on any final state."""
        flow = flows.stream(self._state, self._driver.runtime)
        async with aclosing(self._driver.drive(flow)) as steps:
            async for step in steps:
                if isinstance(step, flows.Emit):
                    yield step.value

    async def cancel(self, timeout: float = 3) -> dict[str, Any]:
        """Cancel the job (``POST /cancel``); a job already final is left as it is."""
        flow = flows.control(self._state, "cancel", self._driver.runtime, timeout=timeout)
        return await self._driver.run(flow)

    async def retry(self, timeout: float = 10) -> dict[str, Any]:
        """Re-queue a FAILED or TIMED_OUT job under the same id (``POST /retry``)."""
        flow = flows.control(self._state, "retry", self._driver.runtime, timeout=timeout)
        return await self._driver.run(flow)
