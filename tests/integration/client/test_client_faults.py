"""Retries against the emulator's injected faults and real limits, in both flavours."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from client_suite import AsyncClient, Client, SyncClient

from bridge import errors
from bridge.emulator.testing import EmulatorHandle, running_emulator
from bridge.runpod.http_client import ClientSession

pytestmark = pytest.mark.integration


@pytest.fixture
def faults(client_emulator: EmulatorHandle) -> Iterator[Any]:
    """``faults(**config)`` sets faults on the ``flaky`` endpoint; cleared afterwards."""

    def set_faults(**config: Any) -> dict[str, Any]:
        return client_emulator.set_faults("flaky", **config)

    yield set_faults
    client_emulator.set_faults("flaky")


def counters(emu: EmulatorHandle) -> dict[str, Any]:
    return emu.stats("flaky")


async def test_idempotent_calls_survive_5xx(
    client: Client, client_emulator: EmulatorHandle, faults: Any
) -> None:
    job = await client.run("flaky", {"sleep_ms": 30})
    faults(error_rate=0.3)  # 20 calls: some 500 for sure, 8 in a row practically never
    before = counters(client_emulator)["faults_injected"]
    for _ in range(20):
        assert (await client.health("flaky"))["jobs"]["completed"] >= 0
    assert await job.output(timeout=10) == {"sleep_ms": 30}
    assert (await job.status())["status"] == "COMPLETED"
    assert counters(client_emulator)["faults_injected"] > before


async def test_run_is_not_resent_after_a_5xx(
    client: Client, client_emulator: EmulatorHandle, faults: Any
) -> None:
    faults(error_rate=1.0)
    before = counters(client_emulator)["requests"].get("run", 0)
    with pytest.raises(errors.ServerError, match="injected"):
        await client.run("flaky", {"x": 1})
    assert counters(client_emulator)["requests"]["run"] == before + 1


async def test_run_is_resent_after_a_429_honouring_retry_after(
    client: Client, client_emulator: EmulatorHandle, faults: Any
) -> None:
    faults(rate_limit_rate=0.3)
    before = counters(client_emulator)
    started = time.monotonic()
    jobs = [await client.run("flaky", {"k": k}) for k in range(3)]
    elapsed = time.monotonic() - started
    after = counters(client_emulator)
    limited = after["faults_injected"] - before["faults_injected"]
    assert after["submissions"] - before["submissions"] == 3  # one job per run() call
    assert elapsed >= limited * 1.0  # each 429 said Retry-After: 1
    faults()
    assert [await job.output(timeout=10) for job in jobs] == [{"k": k} for k in range(3)]


async def test_dropped_connections(
    client: Client, client_emulator: EmulatorHandle, faults: Any
) -> None:
    job = await client.run("flaky", {"sleep_ms": 10})
    faults(drop_rate=0.3)
    assert await job.output(timeout=10) == {"sleep_ms": 10}
    faults(drop_rate=1.0)
    before = counters(client_emulator)["requests"].get("run", 0)
    with pytest.raises(errors.TransportError) as caught:
        await client.run("flaky", {"x": 1})
    assert not isinstance(caught.value, errors.ConnectError)  # it may have been received
    assert counters(client_emulator)["requests"]["run"] == before + 1


async def test_a_run_processed_then_dropped_is_not_submitted_twice(
    client: Client, client_emulator: EmulatorHandle, faults: Any
) -> None:
    faults(drop_after_rate=1.0)
    before = counters(client_emulator)["submissions"]
    with pytest.raises(errors.TransportError):
        await client.run("flaky", {"x": 1})
    assert counters(client_emulator)["submissions"] == before + 1


async def test_a_job_deleted_at_its_ttl_is_expired(client: Client) -> None:
    job = await client.run("external", {"x": 1}, policy={"ttl": 300})
    with pytest.raises(errors.JobExpired) as caught:
        await job.output(timeout=10)
    assert caught.value.job_id == job.job_id
    assert caught.value.status == "EXPIRED"


@pytest.fixture(scope="module")
def strict() -> Iterator[EmulatorHandle]:
    """Small body limit and a /run budget of 2 requests per second."""
    with running_emulator(run_max_bytes=2048, rate_limits={"run": 2}, rate_window_s=1.0) as handle:
        yield handle


@pytest.fixture(params=["sync", "async"])
async def strict_client(
    request: pytest.FixtureRequest, strict: EmulatorHandle
) -> AsyncIterator[Client]:
    if request.param == "sync":
        yield SyncClient(strict)
        return
    async with ClientSession() as session:
        yield AsyncClient(strict, session)


async def test_real_rate_limits_are_waited_out(
    strict_client: Client, strict: EmulatorHandle
) -> None:
    before = strict.stats("echo")
    jobs = [await strict_client.run("echo", {"k": k}) for k in range(5)]
    after = strict.stats("echo")
    assert after["responses_429"] > before["responses_429"]
    assert after["submissions"] - before["submissions"] == 5
    assert [await job.output(timeout=10) for job in jobs] == [{"k": k} for k in range(5)]


async def test_oversized_body_is_payload_too_large(strict_client: Client) -> None:
    with pytest.raises(errors.PayloadTooLargeError) as caught:
        await strict_client.run("echo", {"blob": "x" * 4096})
    assert caught.value.status_code == 413
