"""Asyncio client: :class:`AsyncioEndpoint` and :class:`AsyncioJob` over aiohttp.

Only I/O lives here; every decision is made by the sans-IO flows in ``_flows``. The
caller owns the :class:`aiohttp.ClientSession` (see ``http_client.ClientSession``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, TypeVar

import aiohttp

from bridge.errors import ConnectError, ReadTimeoutError, TransportError
from bridge.runpod import _flows as flows
from bridge.runpod import _protocol as wire
from bridge.runpod._config import Secret, resolve_endpoint_base, resolve_key
from bridge.runpod._hooks import NO_HOOKS, Exchange, Hooks
from bridge.runpod._policy import PollPolicy, RetryPolicy, Runtime
from bridge.runpod._views import EndpointView, JobView, documented

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
        self,
        session: aiohttp.ClientSession,
        secret: Secret | None,
        runtime: Runtime,
        hooks: Hooks = NO_HOOKS,
    ) -> None:
        self.session = session
        self.secret = secret
        self.runtime = runtime
        self.hooks = hooks

    async def send(self, request: wire.Request) -> wire.Response | TransportError:
        await self.hooks.before_async(request)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=wire.CONNECT_TIMEOUT, sock_read=request.timeout
        )
        started = time.monotonic()
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
            await self.hooks.after_async(
                Exchange(request, error=failure, seconds=time.monotonic() - started)
            )
            return failure
        response = wire.Response.received(
            reply.status, body, reply.headers.get("Retry-After"), self.secret
        )
        wire.log_exchange(request, response)
        await self.hooks.after_async(
            Exchange(request, response=response, seconds=time.monotonic() - started)
        )
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


def _driver(
    session: aiohttp.ClientSession,
    api_key: str | None,
    retry: RetryPolicy | None,
    poll: PollPolicy | None,
    hooks: Hooks | None,
) -> _Driver:
    runtime = Runtime(retry=retry or RetryPolicy(), poll=poll or PollPolicy())
    return _Driver(session, resolve_key(api_key), runtime, hooks or NO_HOOKS)


class AsyncioEndpoint(EndpointView):
    """Asyncio client of one queue endpoint, on a caller-owned aiohttp session.

    Args:
        endpoint_id: the endpoint to talk to.
        session: the session to send on (``bridge.runpod.http_client.ClientSession()``
            or any ``aiohttp.ClientSession``); its owner closes it.
        api_key: wins over ``bridge.runpod.api_key`` and ``RUNPOD_API_KEY``.
        base_url: queue API base; wins over ``bridge.runpod.endpoint_url_base``.
        retry: when failed requests are re-sent.
        poll: how waiting for a job polls or holds.
        hooks: callables run before and after every request (budgets, metrics).
    """

    _driver: _Driver

    def __init__(
        self,
        endpoint_id: str,
        session: aiohttp.ClientSession,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._target = wire.Target(resolve_endpoint_base(base_url), endpoint_id)
        self._driver = _driver(session, api_key, retry, poll, hooks)

    @documented
    async def run(
        self,
        endpoint_input: Any,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> AsyncioJob:
        flow = self._submit_flow(endpoint_input, webhook, policy, s3_config)
        return AsyncioJob._attach(await self._driver.run(flow), self._driver)

    @documented
    async def run_sync(
        self,
        request_input: Any,
        timeout: float = 86400,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> Any:
        return await self._driver.run(
            self._run_sync_flow(request_input, timeout, webhook, policy, s3_config)
        )

    @documented
    async def run_held(
        self,
        request_input: Any,
        timeout: float = 0,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> AsyncioJob:
        flow = self._run_held_flow(request_input, timeout, webhook, policy, s3_config)
        return AsyncioJob._attach(await self._driver.run(flow), self._driver)

    @documented
    async def health(self, timeout: float = 3) -> dict[str, Any]:
        reply: dict[str, Any] = await self._driver.run(self._endpoint_flow("health", timeout))
        return reply

    @documented
    async def purge_queue(self, timeout: float = 3) -> dict[str, Any]:
        flow = self._endpoint_flow("purge-queue", timeout)
        reply: dict[str, Any] = await self._driver.run(flow)
        return reply

    @documented
    def job(self, job_id: str) -> AsyncioJob:
        return AsyncioJob._attach(self._job_state(job_id), self._driver)


class AsyncioJob(JobView):
    """A job of a queue endpoint, asyncio flavour.

    Args:
        endpoint_id: the endpoint the job was submitted to.
        job_id: the job's id.
        session: the aiohttp session to send on.
        api_key, base_url, retry, poll, hooks: as for :class:`AsyncioEndpoint`.
    """

    _driver: _Driver

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
        hooks: Hooks | None = None,
    ) -> None:
        target = wire.Target(resolve_endpoint_base(base_url), endpoint_id)
        self._state = flows.JobState(target, job_id)
        self._driver = _driver(session, api_key, retry, poll, hooks)

    @classmethod
    def _attach(cls, state: flows.JobState, driver: _Driver) -> AsyncioJob:
        job = cls.__new__(cls)
        job._state, job._driver = state, driver
        return job

    @documented
    async def status(self) -> dict[str, Any]:
        return await self._driver.run(self._status_flow())

    @documented
    async def output(self, timeout: float = 0) -> Any:
        return await self._driver.run(self._output_flow(timeout))

    @documented
    async def stream(self) -> AsyncIterator[Any]:
        async with aclosing(self._driver.drive(self._stream_flow())) as steps:
            async for step in steps:
                if isinstance(step, flows.Emit):
                    yield step.value

    @documented
    async def cancel(self, timeout: float = 3) -> dict[str, Any]:
        return await self._driver.run(self._control_flow("cancel", timeout))

    @documented
    async def retry(self, timeout: float = 10) -> dict[str, Any]:
        return await self._driver.run(self._control_flow("retry", timeout))
