"""RabbitMQ as the Celery broker (results and bridge state stay on Redis): the Celery
door (output, typed failure, chain, revoke) and the JSON door, against a real RabbitMQ.

The queues are unique to the run and deleted at the end; no other queue is touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import signature
from conftest import Bridge, MakeBridge

from bridge.emulator.testing import EmulatorHandle, wait_until
from bridge.errors import JobCancelled, JobFailed


@pytest.fixture(scope="module")
def rabbit(make_bridge: MakeBridge, amqp_url: str) -> Iterator[Bridge]:
    """A bridge worker whose broker is RabbitMQ (``amqp_url`` skips, or fails in CI,
    when none answers)."""
    bridge = make_bridge(broker_url=amqp_url, start=False)
    assert bridge.app.conf.broker_url.startswith("amqp://")
    assert bridge.app.conf.result_backend.startswith("redis://")
    try:
        bridge.start()
        yield bridge
    finally:
        bridge.stop()
        with bridge.app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in bridge.queues:
                channel.queue_delete(queue)


def test_worker_consumes_its_queue_on_rabbitmq(rabbit: Bridge) -> None:
    with rabbit.app.connection_for_write() as conn:
        for queue in rabbit.queues:
            declared = conn.default_channel.queue_declare(queue, passive=True)
            assert declared.consumer_count >= 1, queue


def test_celery_door_get_returns_output(rabbit: Bridge) -> None:
    result = rabbit.run("echo", {"prompt": "over amqp", "sleep_ms": 50})
    assert result.get(timeout=30) == {"prompt": "over amqp", "sleep_ms": 50}
    assert result.state == "SUCCESS"


def test_celery_door_failure_raises_job_failed(rabbit: Bridge) -> None:
    with pytest.raises(JobFailed) as info:
        rabbit.run("fail", {"message": "rabbit says no"}).get(timeout=30)
    assert "rabbit says no" in str(info.value.error)


def test_chain_continues_with_the_output(rabbit: Bridge) -> None:
    first = signature("bridge.run", kwargs={"route": "echo", "input": {"step": 1}}, app=rabbit.app)
    then = signature("celery.accumulate", app=rabbit.app)
    assert (first | then).apply_async().get(timeout=30) == [{"step": 1}]


def test_revoke_cancels_the_gpu_job(rabbit: Bridge, emulator: EmulatorHandle) -> None:
    result = rabbit.run("echo", {"sleep_ms": 60_000})
    wait_until(lambda: result.state == "IN_PROGRESS", timeout=15)
    job_id = result.info["job_id"]
    result.revoke()
    with pytest.raises(JobCancelled, match="cancel"):
        result.get(timeout=30)
    with emulator.client() as api:
        assert api.get(f"/echo/status/{job_id}").json()["status"] == "CANCELLED"


def test_json_door_poll_and_stream(rabbit: Bridge) -> None:
    request_id, reply_to = rabbit.producer.send("echo", {"door": "json"})
    result = rabbit.result(reply_to)
    assert (result["id"], result["status"], result["output"]) == (
        request_id,
        "COMPLETED",
        {"door": "json"},
    )
    _, reply_to = rabbit.producer.send("stream", {"n": 3, "interval_ms": 10})
    replies = rabbit.replies(reply_to)
    assert [r.get("seq") for r in replies[:-1]] == [0, 1, 2]
    assert replies[-1]["status"] == "COMPLETED"
