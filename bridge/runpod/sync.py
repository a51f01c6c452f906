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
from bridge.runpod._hooks import NO_HOOKS, Exchange, Hooks
from bridge.runpod._policy import PollPolicy, RetryPolicy, Runtime
from bridge.runpod._views import EndpointView, JobView, documented

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
        hooks: Hooks = NO_HOOKS,
    ) -> None:
        self.client = client or _shared_client()
        self.secret = secret
        self.runtime = runtime
        self.hooks = hooks

    def send(self, request: wire.Request) -> wire.Response | TransportError:
        self.hooks.before_sync(request)
        timeout = httpx.Timeout(request.timeout, connect=wire.CONNECT_TIMEOUT, pool=None)
        started = time.monotonic()
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
            self.hooks.after_sync(
                Exchange(request, error=failure, seconds=time.monotonic() - started)
            )
            return failure
        response = wire.Response.received(
            reply.status_code, reply.content, reply.headers.get("Retry-After"), self.secret
        )
        wire.log_exchange(request, response)
        self.hooks.after_sync(
            Exchange(request, response=response, seconds=time.monotonic() - started)
        )
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


def _driver(
    client: httpx.Client | None,
    api_key: str | None,
    retry: RetryPolicy | None,
    poll: PollPolicy | None,
    hooks: Hooks | None,
) -> _Driver:
    runtime = Runtime(retry=retry or RetryPolicy(), poll=poll or PollPolicy())
    return _Driver(client, resolve_key(api_key), runtime, hooks or NO_HOOKS)


class Endpoint(EndpointView):
    """Blocking client of one queue endpoint.

    Args:
        endpoint_id: the endpoint to talk to.
        api_key: wins over ``bridge.runpod.api_key`` and ``RUNPOD_API_KEY``.
        base_url: queue API base; wins over ``bridge.runpod.endpoint_url_base``.
        client: an ``httpx.Client`` to send with (closed by its owner); by default a
            pooled client shared by the whole process.
        retry: when failed requests are re-sent.
        poll: how waiting for a job polls or holds.
        hooks: callables run before and after every request (budgets, metrics).
    """

    _driver: _Driver

    def __init__(
        self,
        endpoint_id: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._target = wire.Target(resolve_endpoint_base(base_url), endpoint_id)
        self._driver = _driver(client, api_key, retry, poll, hooks)

    @documented
    def run(
        self,
        request_input: Any,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> Job:
        flow = self._submit_flow(request_input, webhook, policy, s3_config)
        return Job._attach(self._driver.run(flow), self._driver)

    @documented
    def run_sync(
        self,
        request_input: Any,
        timeout: float = 86400,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> Any:
        return self._driver.run(
            self._run_sync_flow(request_input, timeout, webhook, policy, s3_config)
        )

    @documented
    def run_held(
        self,
        request_input: Any,
        timeout: float = 0,
        *,
        webhook: str | None = None,
        policy: Mapping[str, Any] | None = None,
        s3_config: Mapping[str, Any] | None = None,
    ) -> Job:
        flow = self._run_held_flow(request_input, timeout, webhook, policy, s3_config)
        return Job._attach(self._driver.run(flow), self._driver)

    @documented
    def health(self, timeout: float = 3) -> dict[str, Any]:
        reply: dict[str, Any] = self._driver.run(self._endpoint_flow("health", timeout))
        return reply

    @documented
    def purge_queue(self, timeout: float = 3) -> dict[str, Any]:
        reply: dict[str, Any] = self._driver.run(self._endpoint_flow("purge-queue", timeout))
        return reply

    @documented
    def job(self, job_id: str) -> Job:
        return Job._attach(self._job_state(job_id), self._driver)


class Job(JobView):
    """A job of a queue endpoint, blocking flavour.

    Args:
        endpoint_id: the endpoint the job was submitted to.
        job_id: the job's id.
        api_key, base_url, client, retry, poll, hooks: as for :class:`Endpoint`.
    """

    _driver: _Driver

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
        hooks: Hooks | None = None,
    ) -> None:
        target = wire.Target(resolve_endpoint_base(base_url), endpoint_id)
        self._state = flows.JobState(target, job_id)
        self._driver = _driver(client, api_key, retry, poll, hooks)

    @classmethod
    def _attach(cls, state: flows.JobState, driver: _Driver) -> Job:
        job = cls.__new__(cls)
        job._state, job._driver = state, driver
        return job

    @documented
    def status(self) -> dict[str, Any]:
        return self._driver.run(self._status_flow())

    @documented
    def output(self, timeout: float = 0) -> Any:
        return self._driver.run(self._output_flow(timeout))

    @documented
    def stream(self) -> Iterator[Any]:
        for step in self._driver.drive(self._stream_flow()):
            if isinstance(step, flows.Emit):
                yield step.value

    @documented
    def cancel(self, timeout: float = 3) -> dict[str, Any]:
        return self._driver.run(self._control_flow("cancel", timeout))

    @documented
    def retry(self, timeout: float = 10) -> dict[str, Any]:
        return self._driver.run(self._control_flow("retry", timeout))
