"""Webhook delivery: the final job POSTed to the job's ``webhook`` URL, as RunPod sends it.

Only ``COMPLETED`` and ``FAILED`` jobs are sent (not CANCELLED, TIMED_OUT or purged
ones: RunPod documents those two, runpod-python issue #410 / PR #585). The body is the
status fields (``delayTime``, ``executionTime``, ``error``, ``id``, ``output``,
``status``; no ``workerId``, no ``retries``) plus the request's ``input`` and
``webhook`` (issue #409's sample). The receiver must answer 200: anything else
(another 2xx, a redirect, never followed) and connection errors are retried,
``webhook_attempts`` in all, ``webhook_retry_interval_s`` apart (RunPod: 2 retries 10 s
apart).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from bridge.emulator.engine import Engine
from bridge.emulator.state import COMPLETED, FAILED, EndpointState, Job

log = logging.getLogger("bridge.emulator.webhooks")


class WebhookSender:
    """Sends webhooks on the server's loop with one shared HTTP session."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        engine.on_final.append(self._on_final)

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.engine.settings.webhook_timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _on_final(self, state: EndpointState, job: Job) -> None:
        if job.webhook and job.status in (COMPLETED, FAILED) and self._session is not None:
            task = asyncio.create_task(self._deliver(state, job.webhook, job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, state: EndpointState, url: str, job: Job) -> None:
        assert self._session is not None
        settings = self.engine.settings
        payload = job.webhook_payload(self.engine.now())
        for attempt in range(1, settings.webhook_attempts + 1):
            try:
                # Never follow a redirect: the job's submitter chose this URL, not
                # whoever answers it (a 3xx counts as a failed delivery).
                async with self._session.post(url, json=payload, allow_redirects=False) as response:
                    if response.status == 200:
                        state.counters.webhooks_sent += 1
                        return
                    reason = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            log.info("webhook for job %s attempt %d failed: %s", job.id, attempt, reason)
            if attempt < settings.webhook_attempts:
                await asyncio.sleep(settings.webhook_retry_interval_s)
        state.counters.webhooks_failed += 1
