"""The client's contract, run against the emulator over real sockets in both flavours."""

from __future__ import annotations

import time
from typing import Any

import pytest
from client_suite import Client, wait_for_state

from bridge import errors
from bridge.emulator.testing import EmulatorHandle

pytestmark = pytest.mark.integration


async def test_run_then_output(client: Client) -> None:
    job = await client.run("echo", {"prompt": "hi", "sleep_ms": 20})
    assert job.job_id
    assert await job.output() == {"prompt": "hi", "sleep_ms": 20}


async def test_final_status_keeps_what_output_read(client: Client) -> None:
    job = await client.run("echo", {"sleep_ms": 20})
    assert job.final_status is None
    await job.output(timeout=10)
    final = job.final_status
    assert final is not None
    assert (final["status"], final["output"]) == ("COMPLETED", {"sleep_ms": 20})
    assert final["executionTime"] >= 20


async def test_run_sync_returns_the_output(client: Client) -> None:
    assert await client.run_sync("echo", {"n": 1}) == {"n": 1}


async def test_status_is_the_whole_status_object(client: Client) -> None:
    job = await client.run("echo", {"sleep_ms": 10})
    await job.output(timeout=10)
    status = await job.status()
    assert status["status"] == "COMPLETED"
    assert status["id"] == job.job_id
    assert status["output"] == {"sleep_ms": 10}
    assert {"delayTime", "executionTime", "workerId"} <= set(status)


async def test_a_full_body_is_sent_as_is_and_extras_are_merged(client: Client) -> None:
    job = await client.run("echo", {"input": {"x": 1}}, policy={"ttl": 60_000})
    assert await job.output(timeout=10) == {"x": 1}  # not {"input": {"x": 1}}


async def test_failed_job_raises_with_the_endpoints_error(client: Client) -> None:
    job = await client.run("fail", {"message": "bad prompt"})
    with pytest.raises(errors.JobFailed, match="bad prompt") as caught:
        await job.output(timeout=10)
    assert caught.value.job_id == job.job_id
    assert caught.value.status == "FAILED"
    with pytest.raises(errors.JobFailed, match="bad prompt"):
        await client.run_sync("fail", {"message": "bad prompt"})


async def test_timed_out_job_raises_job_timed_out(client: Client) -> None:
    job = await client.run("short", {"sleep_ms": 5_000})
    with pytest.raises(errors.JobTimedOut) as caught:
        await job.output(timeout=10)
    assert isinstance(caught.value, TimeoutError)
    assert (await job.status())["status"] == "TIMED_OUT"


async def test_cancel_while_queued(client: Client) -> None:
    job = await client.run("external", {"n": 1})
    assert (await job.status())["status"] == "IN_QUEUE"
    reply = await job.cancel()
    assert reply["status"] == "CANCELLED"
    with pytest.raises(errors.JobCancelled):
        await job.output(timeout=5)
    assert [chunk async for chunk in job.stream()] == []


async def test_cancel_while_running(client: Client) -> None:
    job = await client.run("echo", {"sleep_ms": 30_000})
    await wait_for_state(job, "IN_PROGRESS")
    await job.cancel()
    assert (await job.status())["status"] == "CANCELLED"
    with pytest.raises(errors.JobCancelled):
        await job.output(timeout=5)


async def test_cancel_of_a_finished_job_changes_nothing(client: Client) -> None:
    job = await client.run("echo", {"a": 1})
    await job.output(timeout=10)
    assert (await job.cancel())["status"] == "COMPLETED"
    assert await job.output() == {"a": 1}


async def test_stream_with_many_chunks(client: Client) -> None:
    job = await client.run("stream", {"n": 200, "interval_ms": 1})
    chunks = [chunk async for chunk in job.stream()]
    assert chunks == [{"i": k} for k in range(200)]
    assert await job.output() == chunks  # the endpoint aggregates its stream


async def test_stream_ends_when_the_job_is_cancelled(client: Client) -> None:
    job = await client.run("stream", {"n": 10_000, "interval_ms": 5})
    seen: list[Any] = []
    async for chunk in job.stream():
        seen.append(chunk)
        if len(seen) == 3:
            await job.cancel()
    assert seen[:3] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert len(seen) < 10_000


async def test_stream_of_a_job_that_does_not_stream_just_ends(client: Client) -> None:
    job = await client.run("echo", {"sleep_ms": 20})
    assert [chunk async for chunk in job.stream()] == []
    assert await job.output() == {"sleep_ms": 20}


async def test_re_attach_by_job_id(client: Client) -> None:
    job = await client.run("echo", {"sleep_ms": 50, "who": "first"})
    again = client.job("echo", job.job_id)
    assert await again.output(timeout=10) == {"sleep_ms": 50, "who": "first"}
    assert (await again.status())["id"] == job.job_id


async def test_retry_requeues_a_failed_job(client: Client) -> None:
    job = await client.run("fail", {"message": "flaky model"})
    with pytest.raises(errors.JobFailed):
        await job.output(timeout=10)
    reply = await job.retry()
    assert reply["id"] == job.job_id
    assert reply["status"] in {"IN_QUEUE", "IN_PROGRESS", "FAILED"}
    with pytest.raises(errors.JobFailed, match="flaky model"):
        await job.output(timeout=10)


async def test_retry_of_a_completed_job_is_a_bad_request(client: Client) -> None:
    job = await client.run("echo", {})
    await job.output(timeout=10)
    with pytest.raises(errors.BadRequestError):
        await job.retry()


async def test_health(client: Client) -> None:
    health = await client.health("echo")
    assert {"completed", "failed", "inProgress", "inQueue", "retried"} <= set(health["jobs"])
    assert "idle" in health["workers"]


async def test_purge_queue_cancels_queued_jobs(client: Client) -> None:
    jobs = [await client.run("external", {"k": k}) for k in range(3)]
    reply = await client.purge_queue("external")
    assert reply["removed"] >= 3
    for job in jobs:
        with pytest.raises(errors.JobCancelled):
            await job.output(timeout=5)


async def test_deadline_expiry_keeps_the_job_id(client: Client) -> None:
    job = await client.run("external", {"never": "taken"})
    started = time.monotonic()
    with pytest.raises(errors.WaitTimeout) as caught:
        await job.output(timeout=0.5)
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.job_id == job.job_id
    assert 0.4 <= elapsed < 1.5
    await job.cancel()


async def test_run_sync_deadline(client: Client) -> None:
    started = time.monotonic()
    with pytest.raises(errors.WaitTimeout) as caught:
        await client.run_sync("external", {"never": "taken"}, timeout=1.2)
    assert time.monotonic() - started < 2.5
    assert caught.value.job_id is not None
    await client.job("external", caught.value.job_id).cancel()


async def test_bad_key_is_an_authentication_error_without_the_key(
    client: Client, client_emulator: EmulatorHandle
) -> None:
    bad = "rpa_WRONG_KEY_0123456789"
    with pytest.raises(errors.AuthenticationError) as caught:
        await client.health("echo", api_key=bad)
    assert caught.value.status_code == 401
    assert "invalid API key" in str(caught.value)
    assert bad not in str(caught.value)
    assert bad not in repr(caught.value)


async def test_unknown_endpoint_and_unknown_job_are_not_found(client: Client) -> None:
    with pytest.raises(errors.NotFoundError):
        await client.health("no-such-endpoint")
    with pytest.raises(errors.NotFoundError):
        await client.job("echo", "no-such-job").status()


async def test_invalid_input_is_a_bad_request(client: Client) -> None:
    with pytest.raises(errors.BadRequestError, match="input"):
        await client.run("echo", "a bare string")  # wrapped, but the emulator wants an object


async def test_unreachable_server_is_a_connect_error(client: Client) -> None:
    with pytest.raises(errors.ConnectError):
        await client.health("echo", base_url="http://127.0.0.1:9/v2")
