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


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Requests by operation and injected faults by kind between two stats readings."""
    changes = {
        f"faults.{k}": v - before["faults_by_kind"][k] for k, v in after["faults_by_kind"].items()
    }
    changes |= {op: n - before["requests"].get(op, 0) for op, n in after["requests"].items()}
    changes["submissions"] = after["submissions"] - before["submissions"]
    return {k: v for k, v in changes.items() if v}


# The seeds below were picked for the sequences they give (faults.FaultDice draws one
# number per enabled fault per request, in arrival order); the counts are what the
# emulator injects for them, checked against its own counters. A change of the dice
# changes these numbers, and these tests say so.


async def test_idempotent_calls_survive_5xx(
    client: Client, client_emulator: EmulatorHandle, faults: Any
) -> None:
    job = await client.run("flaky", {"sleep_ms": 30})
    # Seed 3 at 30 %: 28 requests for 20 answers, 8 of them 500, never more than 2 in a row.
    faults(error_rate=0.3, seed=3)
    before = counters(client_emulator)
    answers = [await client.health("flaky") for _ in range(20)]
    after = counters(client_emulator)
    assert all(set(a) == {"jobs", "workers"} for a in answers)
    # Every injected 500 was retried once, and nothing else was sent.
    assert delta(before, after) == {"faults.error": 8, "health": 28}
    assert await job.output(timeout=10) == {"sleep_ms": 30}
    assert (await job.status())["status"] == "COMPLETED"


async def test_run_is_not_resent_after_a_5xx(
    client: Client, client_emulator: EmulatorHandle, faults: Any
) -> None:
    faults(error_rate=1.0)
    before = counters(client_emulator)
    with pytest.raises(errors.ServerError, match="injected"):
        await client.run("flaky", {"x": 1})
    assert delta(before, counters(client_emulator)) == {"faults.error": 1, "run": 1}


async def test_run_is_resent_after_a_429_honouring_retry_after(
    client: Client, client_emulator: EmulatorHandle, faults: Any
) -> None:
    # Seed 1 at 30 %: the 1st and 4th /run requests get 429 (Retry-After: 1).
    faults(rate_limit_rate=0.3, seed=1)
    before = counters(client_emulator)
    started = time.monotonic()
    jobs = [await client.run("flaky", {"k": k}) for k in range(3)]
    elapsed = time.monotonic() - started
    after = counters(client_emulator)
    # One job per run() call: a 429 was not processed, so resending it is safe.
    assert delta(before, after) == {"faults.rate_limited": 2, "run": 5, "submissions": 3}
    assert elapsed >= 2 * 1.0  # each 429 said Retry-After: 1
    faults()
    assert [await job.output(timeout=10) for job in jobs] == [{"k": k} for k in range(3)]


async def test_dropped_connections(
    client: Client, client_emulator: EmulatorHandle, faults: Any
) -> None:
    job = await client.run("flaky", {"sleep_ms": 10})
    assert await job.output(timeout=10) == {"sleep_ms": 10}
    # Seed 2 at 30 %: 13 /status requests for 10 answers, 3 of them dropped unanswered.
    faults(drop_rate=0.3, seed=2)
    before = counters(client_emulator)
    answers = [await job.status() for _ in range(10)]
    assert delta(before, counters(client_emulator)) == {"faults.dropped": 3, "status": 13}
    assert {a["status"] for a in answers} == {"COMPLETED"}
    faults(drop_rate=1.0)
    before = counters(client_emulator)
    with pytest.raises(errors.TransportError) as caught:
        await client.run("flaky", {"x": 1})
    assert not isinstance(caught.value, errors.ConnectError)  # it may have been received
    assert delta(before, counters(client_emulator)) == {"faults.dropped": 1, "run": 1}


async def test_a_run_processed_then_dropped_is_not_submitted_twice(
    client: Client, client_emulator: EmulatorHandle, faults: Any
) -> None:
    faults(drop_after_rate=1.0)
    before = counters(client_emulator)
    with pytest.raises(errors.TransportError):
        await client.run("flaky", {"x": 1})
    assert delta(before, counters(client_emulator)) == {
        "faults.dropped_after": 1,
        "run": 1,
        "submissions": 1,
    }


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
