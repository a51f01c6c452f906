"""Both flavours send the same requests for every method.

Each scenario runs once per flavour against the emulator; the client's own debug log
(one line per request sent) is the record. Job ids and ``wait`` values are normalised,
and back-to-back repeats of one request (how many polls fit in a wait) are collapsed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from client_suite import AsyncClient, Client, SyncClient

from bridge import errors
from bridge.emulator.testing import EmulatorHandle
from bridge.runpod.http_client import ClientSession

pytestmark = pytest.mark.integration

Scenario = Callable[[Client], Awaitable[Any]]


async def run_and_output(client: Client) -> Any:
    job = await client.run("echo", {"sleep_ms": 30})
    return await job.output()


async def run_sync(client: Client) -> Any:
    return await client.run_sync("echo", {"a": 1})


async def status_health_purge(client: Client) -> Any:
    job = await client.run("echo", {"a": 1})
    await job.output(timeout=10)
    status = await job.status()
    health = await client.health("echo")
    purged = await client.purge_queue("external")
    return status["status"], sorted(health), sorted(purged)


async def cancel_queued(client: Client) -> Any:
    job = await client.run("external", {"a": 1})
    await job.cancel()
    with pytest.raises(errors.JobCancelled):
        await job.output()
    return [chunk async for chunk in job.stream()]


async def fail_and_retry(client: Client) -> Any:
    job = await client.run("fail", {"message": "no"})
    with pytest.raises(errors.JobFailed):
        await job.output()
    await job.retry()
    with pytest.raises(errors.JobFailed):
        await job.output()


async def stream_after_completion(client: Client) -> Any:
    job = await client.run("stream", {"n": 3, "interval_ms": 1})
    await job.output()
    return [chunk async for chunk in job.stream()]


async def re_attach(client: Client) -> Any:
    job = await client.run("echo", {"sleep_ms": 10})
    return await client.job("echo", job.job_id).output(timeout=10)


async def deadline(client: Client) -> Any:
    job = await client.run("external", {"a": 1})
    with pytest.raises(errors.WaitTimeout):
        await job.output(timeout=1.2)
    return (await job.cancel())["status"]


async def bad_key(client: Client) -> Any:
    with pytest.raises(errors.AuthenticationError):
        await client.health("echo", api_key="wrong")


SCENARIOS: list[Scenario] = [
    run_and_output,
    run_sync,
    status_health_purge,
    cancel_queued,
    fail_and_retry,
    stream_after_completion,
    re_attach,
    deadline,
    bad_key,
]


def normalised(records: list[logging.LogRecord], base_url: str) -> list[str]:
    lines: list[str] = []
    for record in records:
        line = record.getMessage().replace(base_url, "")
        line = re.sub(r"/(status|status-sync|stream|cancel|retry)/[^?\s]+", r"/\1/{id}", line)
        line = re.sub(r"wait=\d+", "wait=N", line)
        if not lines or lines[-1] != line:
            lines.append(line)
    return lines


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_both_flavours_send_the_same_requests(
    scenario: Scenario, client_emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.runpod")
    sequences: dict[str, list[str]] = {}
    results: dict[str, Any] = {}
    async with ClientSession() as session:
        for client in (SyncClient(client_emulator), AsyncClient(client_emulator, session)):
            caplog.clear()
            results[client.flavour] = await scenario(client)
            records = [r for r in caplog.records if r.name == "bridge.runpod"]
            sequences[client.flavour] = normalised(records, client_emulator.base_url)
    assert sequences["sync"], "the scenario sent nothing"
    assert sequences["sync"] == sequences["async"]
    assert results["sync"] == results["async"]
