"""The official ``runpod`` SDK (1.12.0, unmodified) against the emulator.

Every queue operation of ``runpod.Endpoint``/``Job`` and ``AsyncioEndpoint``/
``AsyncioJob`` is driven on the built-in endpoints ``echo``, ``stream``, ``fail`` and
``external``. Where the SDK has a known bug (ENDPOINT_API.md §12) the test says so and
checks the emulator's side with a plain HTTP call instead. The admin helpers
(``create_endpoint`` …) are covered in ``test_admin_graphql.py``.

The SDK polls once a second (and sleeps before its first ``/stream`` poll), so jobs
here are short and nothing waits on it unbounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from bridge.emulator.testing import EmulatorHandle, running_emulator

try:
    import runpod
    from runpod import AsyncioEndpoint
    from runpod.http_client import ClientSession
except ImportError:
    if os.environ.get("CI"):
        raise  # the SDK is in the test extra: missing it in CI is a failure
    pytest.skip("the runpod SDK is not installed", allow_module_level=True)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WORKER_KEYS = {"idle", "initializing", "ready", "running", "throttled", "unhealthy"}
JOB_KEYS = {"completed", "failed", "inProgress", "inQueue", "retried"}


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorHandle]:
    """A private emulator with default settings, so that queue counts (``purge``
    removes exactly our jobs) and the purge rate limit (2 per 10 s) are ours alone.
    The SDK's module globals point at it for the duration of this module."""
    saved = runpod.api_key, runpod.endpoint_url_base
    with running_emulator() as handle:
        # Endpoint, Job and AsyncioJob copy these globals when they are constructed.
        runpod.api_key = handle.api_key
        runpod.endpoint_url_base = handle.base_url
        try:
            yield handle
        finally:
            runpod.api_key, runpod.endpoint_url_base = saved


@pytest.fixture
def raw(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    """Plain HTTP on the queue API, to check what the emulator really answered."""
    with httpx.Client(
        base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.api_key}"}, timeout=10
    ) as client:
        yield client


@pytest.fixture
def endpoint(emu: EmulatorHandle) -> Iterator[Callable[[str], runpod.Endpoint]]:
    """``runpod.Endpoint`` factory; closes the requests sessions the SDK leaves open."""
    made: list[runpod.Endpoint] = []

    def make(endpoint_id: str) -> runpod.Endpoint:
        made.append(runpod.Endpoint(endpoint_id))
        return made[-1]

    yield make
    for ep in made:
        ep.rp_client.rp_session.close()


def get(raw: httpx.Client, path: str) -> dict[str, Any]:
    response = raw.get(path)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def wait_until(what: str, probe: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# -- sync client: runpod.Endpoint / runpod.endpoint.runner.Job -------------------------


def test_run_status_output(endpoint: Callable[[str], runpod.Endpoint], raw: httpx.Client) -> None:
    job_input = {"prompt": "héllo", "sleep_ms": 300}
    job = endpoint("echo").run(job_input)
    assert job.job_id.endswith("-u1")
    # SDK bug §12.1.6: status() gives only the status string, nothing else.
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS")
    assert job.output(timeout=10) == job_input
    assert job.status() == "COMPLETED"
    body = get(raw, f"/echo/status/{job.job_id}")
    assert body["status"] == "COMPLETED"
    assert body["output"] == job_input
    assert body["delayTime"] >= 0
    assert body["executionTime"] >= 300
    assert body["workerId"]


def test_run_with_a_full_envelope(
    endpoint: Callable[[str], runpod.Endpoint], emu: EmulatorHandle
) -> None:
    # The sync client sends the body as it is when it already has a truthy "input"
    # (§12.1.8): the only way to pass a policy through it.
    before = emu.stats("echo")["submissions"]
    job = endpoint("echo").run({"input": {"x": 1}, "policy": {"ttl": 60_000}})
    assert job.output(timeout=10) == {"x": 1}  # not wrapped a second time
    assert emu.stats("echo")["submissions"] == before + 1


def test_run_sync_returns_the_output(endpoint: Callable[[str], runpod.Endpoint]) -> None:
    assert endpoint("echo").run_sync({"n": 7}, timeout=30) == {"n": 7}


def test_run_sync_of_a_failing_job(
    endpoint: Callable[[str], runpod.Endpoint], raw: httpx.Client
) -> None:
    ep = endpoint("fail")
    failed_before = ep.health()["jobs"]["failed"]
    # SDK bug §12.1.5: run_sync returns .get("output") for FAILED, i.e. None, and the
    # error is lost. The emulator did report the failure:
    assert ep.run_sync({"message": "boom"}, timeout=30) is None
    assert ep.health()["jobs"]["failed"] == failed_before + 1
    response = raw.post("/fail/runsync", json={"input": {"message": "boom"}})
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "FAILED"
    assert body["id"].startswith("sync-")
    assert json.loads(body["error"])["error_message"] == "boom"


def test_run_sync_continues_with_status_when_the_hold_ends() -> None:
    # /runsync answers IN_QUEUE/IN_PROGRESS when the job outlives the hold; the SDK
    # then polls /status (runner.py:248-250). A short hold makes that happen.
    with running_emulator(runsync_default_wait_ms=200) as short:
        saved = runpod.endpoint_url_base
        runpod.endpoint_url_base = short.base_url
        try:
            ep = runpod.Endpoint("echo")
        finally:
            runpod.endpoint_url_base = saved
        try:
            assert ep.run_sync({"sleep_ms": 800}, timeout=10) == {"sleep_ms": 800}
        finally:
            ep.rp_client.rp_session.close()
        requests = short.stats("echo")["requests"]
    assert requests["runsync"] == 1
    assert requests["status"] >= 1


def test_health(endpoint: Callable[[str], runpod.Endpoint]) -> None:
    ep = endpoint("echo")
    ep.run_sync({"warm": True}, timeout=30)
    health = ep.health()
    assert set(health) == {"jobs", "workers"}
    assert set(health["jobs"]) == JOB_KEYS
    assert set(health["workers"]) == WORKER_KEYS
    assert health["jobs"]["completed"] >= 1
    assert sum(health["workers"].values()) >= 1  # echo's simulated worker


def test_cancel_a_queued_job(endpoint: Callable[[str], runpod.Endpoint], raw: httpx.Client) -> None:
    job = endpoint("external").run({"never": "runs"})  # no worker serves `external`
    assert job.status() == "IN_QUEUE"
    assert job.cancel() == {"id": job.job_id, "status": "CANCELLED"}
    assert job.status() == "CANCELLED"
    assert job.output(timeout=5) is None
    body = get(raw, f"/external/status/{job.job_id}")
    assert body == {"id": job.job_id, "status": "CANCELLED"}


def test_cancel_a_running_job(
    endpoint: Callable[[str], runpod.Endpoint], raw: httpx.Client
) -> None:
    job = endpoint("echo").run({"sleep_ms": 5000})
    wait_until("the job to start", lambda: job.status() == "IN_PROGRESS")
    assert job.cancel() == {"id": job.job_id, "status": "CANCELLED"}
    assert job.status() == "CANCELLED"
    body = get(raw, f"/echo/status/{job.job_id}")
    assert body["status"] == "CANCELLED"
    assert "output" not in body
    assert body["executionTime"] < 5000  # the handler was stopped, not waited for


def test_purge_queue(
    endpoint: Callable[[str], runpod.Endpoint], raw: httpx.Client, emu: EmulatorHandle
) -> None:
    ep = endpoint("external")
    jobs = [ep.run({"k": k}) for k in range(2)]
    assert ep.purge_queue() == {"removed": 2, "status": "completed"}
    for job in jobs:
        assert job.status() == "CANCELLED"
        assert get(raw, f"/external/status/{job.job_id}")["error"] == "purged"
    assert emu.stats("external")["purged_jobs"] == 2


def test_stream(
    endpoint: Callable[[str], runpod.Endpoint], raw: httpx.Client, emu: EmulatorHandle
) -> None:
    # Chunks come 400 ms apart, so they span several of the SDK's 1 s polls: each
    # must be delivered exactly once, in order, and the loop must end.
    job = endpoint("stream").run({"n": 3, "interval_ms": 400})
    before = emu.stats("stream")["requests"].get("stream", 0)
    assert list(job.stream()) == [{"i": 0}, {"i": 1}, {"i": 2}]
    polls = emu.stats("stream")["requests"]["stream"] - before
    assert 2 <= polls <= 4
    # The `stream` endpoint sets return_aggregate_stream: /status has the aggregate.
    assert job.output(timeout=5) == [{"i": 0}, {"i": 1}, {"i": 2}]
    # SDK bug §12.1.9: the sync stream() indexes ["stream"] even on final replies, so
    # the emulator always sends the key.
    assert get(raw, f"/stream/stream/{job.job_id}") == {
        "id": job.job_id,
        "status": "COMPLETED",
        "stream": [],
    }


def test_stream_of_a_plain_job_ends_with_nothing(
    endpoint: Callable[[str], runpod.Endpoint],
) -> None:
    job = endpoint("echo").run({"plain": True})
    assert list(job.stream()) == []
    assert job.output(timeout=5) == {"plain": True}


def test_stream_of_a_cancelled_job(
    endpoint: Callable[[str], runpod.Endpoint], raw: httpx.Client
) -> None:
    job = endpoint("stream").run({"n": 100, "interval_ms": 100})
    chunks = job.stream()
    try:
        first = next(chunks)  # the SDK's first poll, after its 1 s sleep
    finally:
        chunks.close()
    assert job.cancel()["status"] == "CANCELLED"
    # SDK bug §12.1.7: CANCELLED is not in FINAL_STATES, so stream() would poll a
    # cancelled job forever; we stop iterating and check the emulator ends the stream:
    # a CANCELLED reply, the chunks not yet delivered, then nothing more.
    last = get(raw, f"/stream/stream/{job.job_id}")
    assert last["status"] == "CANCELLED"
    assert get(raw, f"/stream/stream/{job.job_id}") == {
        "id": job.job_id,
        "status": "CANCELLED",
        "stream": [],
    }
    # The SDK's poll took the first chunks; ours has only later ones (or none), in
    # order, and the handler was stopped long before its 100 chunks.
    assert first == {"i": 0}
    rest = [chunk["output"]["i"] for chunk in last["stream"]]
    if rest:
        assert rest == list(range(rest[0], rest[0] + len(rest)))
        assert rest[0] > 0
        assert rest[-1] < 99


# -- async client: runpod.AsyncioEndpoint / AsyncioJob ----------------------------------


async def test_async_run_status_output(emu: EmulatorHandle) -> None:
    async with ClientSession() as session:
        ep = AsyncioEndpoint("echo", session)
        # The async client always wraps its argument in {"input": ...} (§12.2.3).
        job = await ep.run({"prompt": "hi", "sleep_ms": 200})
        assert await job.status() in ("IN_QUEUE", "IN_PROGRESS")
        # SDK bug §12.2.1: output()'s default timeout=0 raises TimeoutError at once;
        # a real timeout is needed.
        assert await job.output(timeout=10) == {"prompt": "hi", "sleep_ms": 200}
        assert await job.status() == "COMPLETED"


async def test_async_failed_job(emu: EmulatorHandle, raw: httpx.Client) -> None:
    async with ClientSession() as session:
        job = await AsyncioEndpoint("fail", session).run({"message": "async boom"})
        # Like the sync client, output() never surfaces the error (§12.1.5).
        assert await job.output(timeout=10) is None
        assert await job.status() == "FAILED"
    body = get(raw, f"/fail/status/{job.job_id}")
    assert body["status"] == "FAILED"
    assert json.loads(body["error"])["error_message"] == "async boom"


async def test_async_health_cancel_purge(emu: EmulatorHandle, raw: httpx.Client) -> None:
    async with ClientSession() as session:
        ep = AsyncioEndpoint("external", session)
        health = await ep.health()
        assert set(health["jobs"]) == JOB_KEYS
        assert set(health["workers"]) == WORKER_KEYS
        kept, cancelled = await ep.run({"k": 1}), await ep.run({"k": 2})
        # Body-less POSTs (aiohttp sends no body at all) must be accepted.
        assert await cancelled.cancel() == {"id": cancelled.job_id, "status": "CANCELLED"}
        assert await ep.purge_queue() == {"removed": 1, "status": "completed"}
        assert await kept.status() == "CANCELLED"
        assert await cancelled.status() == "CANCELLED"
    assert get(raw, f"/external/status/{kept.job_id}")["error"] == "purged"
    assert "error" not in get(raw, f"/external/status/{cancelled.job_id}")


async def test_async_stream(emu: EmulatorHandle) -> None:
    async with ClientSession() as session:
        job = await AsyncioEndpoint("stream", session).run({"n": 3, "interval_ms": 300})
        chunks = [chunk async for chunk in job.stream()]
        assert chunks == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert await job.output(timeout=5) == chunks


async def test_async_cancel_a_running_stream(emu: EmulatorHandle, raw: httpx.Client) -> None:
    async with ClientSession() as session:
        job = await AsyncioEndpoint("stream", session).run({"n": 100, "interval_ms": 50})
        deadline = time.monotonic() + 10
        while await job.status() != "IN_PROGRESS":
            assert time.monotonic() < deadline, "the job never started"
            await asyncio.sleep(0.02)
        assert (await job.cancel())["status"] == "CANCELLED"
        assert await job.status() == "CANCELLED"
    # The async stream() has the same CANCELLED-is-not-final bug (§12.2.4); the
    # emulator's /stream says CANCELLED, and stops growing.
    first = get(raw, f"/stream/stream/{job.job_id}")
    assert first["status"] == "CANCELLED"
    assert get(raw, f"/stream/stream/{job.job_id}")["stream"] == []
