"""The two client flavours behind one awaitable test interface, and test helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import bridge.runpod as runpod
from bridge.emulator.testing import EmulatorHandle

TEST_RETRY = runpod.RetryPolicy(attempts=8, backoff=0.02, max_backoff=0.2)


class SyncJob:
    """A blocking ``Job`` behind awaitable methods (each call runs in a worker thread)."""

    def __init__(self, job: runpod.Job) -> None:
        self.job = job
        self.job_id = job.job_id

    @property
    def final_status(self) -> dict[str, Any] | None:
        return self.job.final_status

    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.job.status)

    async def output(self, timeout: float = 0) -> Any:
        return await asyncio.to_thread(self.job.output, timeout)

    async def cancel(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.job.cancel)

    async def retry(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.job.retry)

    async def stream(self) -> AsyncIterator[Any]:
        chunks = self.job.stream()
        done = object()
        while (chunk := await asyncio.to_thread(next, chunks, done)) is not done:
            yield chunk


class SyncClient:
    flavour = "sync"

    def __init__(self, emu: EmulatorHandle, **options: Any) -> None:
        self.emu, self.options = emu, {"retry": TEST_RETRY, **options}

    def endpoint(self, endpoint_id: str, **options: Any) -> runpod.Endpoint:
        opts = {"api_key": self.emu.api_key, "base_url": self.emu.base_url, **self.options}
        return runpod.Endpoint(endpoint_id, **{**opts, **options})

    async def run(self, endpoint_id: str, request: Any, **kwargs: Any) -> SyncJob:
        job = await asyncio.to_thread(self.endpoint(endpoint_id).run, request, **kwargs)
        return SyncJob(job)

    async def run_sync(self, endpoint_id: str, request: Any, timeout: float = 86400) -> Any:
        return await asyncio.to_thread(self.endpoint(endpoint_id).run_sync, request, timeout)

    async def health(self, endpoint_id: str, **options: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.endpoint(endpoint_id, **options).health)

    async def purge_queue(self, endpoint_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.endpoint(endpoint_id).purge_queue)

    def job(self, endpoint_id: str, job_id: str) -> SyncJob:
        return SyncJob(self.endpoint(endpoint_id).job(job_id))


class AsyncClient:
    flavour = "async"

    def __init__(self, emu: EmulatorHandle, session: Any, **options: Any) -> None:
        self.emu, self.session = emu, session
        self.options = {"retry": TEST_RETRY, **options}

    def endpoint(self, endpoint_id: str, **options: Any) -> runpod.AsyncioEndpoint:
        opts = {"api_key": self.emu.api_key, "base_url": self.emu.base_url, **self.options}
        return runpod.AsyncioEndpoint(endpoint_id, self.session, **{**opts, **options})

    async def run(self, endpoint_id: str, request: Any, **kwargs: Any) -> runpod.AsyncioJob:
        return await self.endpoint(endpoint_id).run(request, **kwargs)

    async def run_sync(self, endpoint_id: str, request: Any, timeout: float = 86400) -> Any:
        return await self.endpoint(endpoint_id).run_sync(request, timeout)

    async def health(self, endpoint_id: str, **options: Any) -> dict[str, Any]:
        return await self.endpoint(endpoint_id, **options).health()

    async def purge_queue(self, endpoint_id: str) -> dict[str, Any]:
        return await self.endpoint(endpoint_id).purge_queue()

    def job(self, endpoint_id: str, job_id: str) -> runpod.AsyncioJob:
        return self.endpoint(endpoint_id).job(job_id)


Client = SyncClient | AsyncClient


async def wait_for_state(job: Any, *states: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll ``job.status()`` until it reports one of ``states``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status: dict[str, Any] = await job.status()
        if status["status"] in states:
            return status
        assert loop.time() < deadline, f"job stayed {status['status']}, wanted {states}"
        await asyncio.sleep(0.01)
