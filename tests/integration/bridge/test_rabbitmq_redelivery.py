"""RabbitMQ redelivery (issue 11, item 7): a worker dies holding tasks it has received
but not acknowledged; RabbitMQ puts them back in the queue at once (its own count shows
it), the next worker runs them, and each request is answered once and submitted once
(counted at the emulator).

The worker is frozen (SIGSTOP) before the tasks are sent, so RabbitMQ delivers them into
its prefetch window where they stay unacknowledged; then it is killed (SIGKILL).
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import pytest
from conftest import Bridge, MakeBridge, assert_no_late_replies
from promisekit import add_endpoint, drain, finals, jobs_by_marker

from bridge.emulator.testing import EmulatorHandle, wait_until

TASKS = 20  # under the worker's prefetch window (8 x 4 slots): RabbitMQ hands it all 20


@pytest.fixture
def rabbit(make_bridge: MakeBridge, amqp_url: str, emulator: EmulatorHandle) -> Iterator[Bridge]:
    endpoint_id = add_endpoint(emulator, "redeliver")
    bridge = make_bridge(broker_url=amqp_url, start=False,
                         routes={"redeliver": {"endpoint_id": endpoint_id}})  # fmt: skip
    try:
        yield bridge
    finally:
        bridge.stop()
        with bridge.app.connection_for_write() as conn:
            for queue in bridge.queues:
                conn.default_channel.queue_delete(queue)


def _ready_in_queue(bridge: Bridge) -> int:
    """Messages RabbitMQ holds ready in the bridge's queue (not delivered to anyone)."""
    with bridge.app.connection_for_write() as conn:
        declared = conn.default_channel.queue_declare(bridge.settings.default_queue, passive=True)
        return int(declared.message_count)


def test_tasks_of_a_killed_worker_are_redelivered_and_answered_once(
    rabbit: Bridge, emulator: EmulatorHandle
) -> None:
    endpoint_id = rabbit.settings.routes["redeliver"].endpoint_id
    rabbit.start()
    first = rabbit.procs[-1]
    os.kill(first.pid, signal.SIGSTOP)  # alive for RabbitMQ, but it runs nothing
    try:
        sent = []
        for k in range(TASKS):
            reply_to = rabbit.producer.keys.reply(f"redeliver-{uuid.uuid4()}")
            result = rabbit.run("redeliver", {"m": f"redeliver-{k}"}, reply_to=reply_to)
            sent.append((result, reply_to))
        # RabbitMQ has handed every task to the frozen worker: none is ready any more
        wait_until(lambda: _ready_in_queue(rabbit) == 0, timeout=30, interval=0.1)
        assert emulator.stats(endpoint_id)["submissions"] == 0  # none was run
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    # The connection died with the worker: RabbitMQ requeues what it had not acknowledged.
    wait_until(lambda: _ready_in_queue(rabbit) == TASKS, timeout=30, interval=0.1)
    rabbit.start()
    outputs = [result.get(timeout=60) for result, _ in sent]
    got = [finals(drain(rabbit.redis, reply_to, timeout=60)) for _, reply_to in sent]
    assert_no_late_replies(rabbit.redis, rabbit.settings, [reply_to for _, reply_to in sent])
    assert outputs == [{"m": f"redeliver-{k}"} for k in range(TASKS)]
    assert [[r["status"] for r in one] for one in got] == [["COMPLETED"]] * TASKS
    assert jobs_by_marker(emulator, endpoint_id, "m") == {f"redeliver-{k}": 1 for k in range(TASKS)}
    assert emulator.stats(endpoint_id)["submissions"] == TASKS
