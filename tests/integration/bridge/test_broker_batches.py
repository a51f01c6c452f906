"""The Celery broker's Redis transport pops in batches and removes acknowledgements
together (bridge.worker.broker): on a real Redis, through kombu's own consumers, every
message popped is recorded as unacked before anyone sees it, a batch never exceeds the
consumer's prefetch credit, keeps kombu's priority order, stops at a message that is not
kombu's, survives a kill in the middle of its delivery, and acknowledgements made on the
event loop leave the unacked records at the loop's next turn (or when the channel
closes)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub

from bridge.worker.broker import REDIS_TRANSPORT

PREFETCH = 8


@pytest.fixture
def queue() -> Queue:
    name = f"batches-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(name, type="direct"), routing_key=name, max_priority=9)


def private(queue: Queue) -> dict[str, str]:
    """Transport options giving the test its own unacked records (kombu shares one hash
    per database between every consumer, other tests' workers included)."""
    return {"unacked_key": f"{queue.name}:unacked", "unacked_index_key": f"{queue.name}:index",
            "unacked_mutex_key": f"{queue.name}:mutex"}  # fmt: skip


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def connect(redis_url: str, queue: Queue, transport: str | None = REDIS_TRANSPORT,
            **options: Any) -> Connection:  # fmt: skip
    return Connection(redis_url, transport=transport,
                      transport_options={**private(queue), **options})  # fmt: skip


def publish(redis_url: str, queue: Queue, bodies: list[Any], **kwargs: Any) -> None:
    with connect(redis_url, queue, transport=None) as conn:  # kombu's own transport publishes
        producer = Producer(conn)
        for body in bodies:
            producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                             declare=[queue], **kwargs)  # fmt: skip


def number(raw: bytes | dict[str, Any]) -> int:
    """The ``n`` of a kombu message as stored in Redis (its body is base64 JSON)."""
    message = json.loads(raw) if isinstance(raw, bytes) else raw
    n: int = json.loads(base64.b64decode(message["body"]))["n"]
    return n


@contextlib.contextmanager
def on_a_loop(
    redis_url: str, queue: Queue, on_message: Callable[[Any, Any], None]
) -> Iterator[tuple[Hub, Any]]:
    """A consumer of ``queue`` on kombu's event loop (as Celery's consumer runs), its
    messages acknowledged (or not) by ``on_message`` on the loop's thread; yields the
    loop, to turn with ``run_once``, and the channel."""
    hub = Hub()
    try:
        with connect(redis_url, queue) as conn:
            conn.transport.register_with_event_loop(conn.connection, hub)
            channel = conn.default_channel
            with Consumer(channel, [queue], callbacks=[on_message], prefetch_count=PREFETCH):
                yield hub, channel
    finally:
        hub.close()


def unacked_tags(client: redis.Redis, channel: Any) -> set[str]:
    return {t.decode() for t in client.hkeys(channel.unacked_key)}


def test_a_batch_takes_the_prefetch_credit_and_records_each_message_before_delivery(
    redis_url: str, queue: Queue, client: redis.Redis
) -> None:
    publish(redis_url, queue, [{"n": n} for n in range(20)])
    seen: list[int] = []
    recorded_at_delivery: list[bool] = []
    with connect(redis_url, queue) as conn:
        channel = conn.default_channel

        def on_message(body: Any, message: Any) -> None:
            seen.append(body["n"])
            recorded_at_delivery.append(
                client.hexists(channel.unacked_key, message.delivery_tag)
                and client.zscore(channel.unacked_index_key, message.delivery_tag) is not None
            )

        with Consumer(channel, [queue], callbacks=[on_message], prefetch_count=PREFETCH):
            conn.drain_events(timeout=5)  # one BRPOP answered: one batch
            assert seen == list(range(PREFETCH))  # in publication order, the credit's worth
            assert all(recorded_at_delivery)
            assert client.llen(queue.name) == 20 - PREFETCH
            assert len(unacked_tags(client, channel)) == PREFETCH
            # the records are kombu's own: [message, exchange, routing key]
            raw = client.hget(channel.unacked_key, next(iter(unacked_tags(client, channel))))
            message, exchange, routing_key = json.loads(raw)
            assert (exchange, routing_key) == (queue.exchange.name, queue.routing_key)
            assert number(message) in range(PREFETCH)


def test_no_credit_left_means_no_batch(redis_url: str, queue: Queue, client: redis.Redis) -> None:
    publish(redis_url, queue, [{"n": n} for n in range(5)])
    seen: list[int] = []
    with connect(redis_url, queue) as conn:
        channel = conn.default_channel
        with Consumer(channel, [queue], callbacks=[lambda b, m: seen.append(b["n"])],
                      prefetch_count=1):  # fmt: skip
            conn.drain_events(timeout=5)
            assert seen == [0]
            assert client.llen(queue.name) == 4


def test_acknowledged_without_a_loop_the_records_go_at_once(
    redis_url: str, queue: Queue, client: redis.Redis
) -> None:
    publish(redis_url, queue, [{"n": n} for n in range(3)])
    with connect(redis_url, queue) as conn:
        channel = conn.default_channel
        with Consumer(channel, [queue], callbacks=[lambda b, m: m.ack()],
                      prefetch_count=PREFETCH):  # fmt: skip
            conn.drain_events(timeout=5)
            assert unacked_tags(client, channel) == set()
            assert client.zcard(channel.unacked_index_key) == 0


def test_the_batch_keeps_kombus_priority_order(redis_url: str, queue: Queue) -> None:
    priorities = [0, 9, 5, 3, 9, 0, 6, 1, 8, 2]
    bodies = [{"n": n, "p": p} for n, p in enumerate(priorities)]
    for body in bodies:
        publish(redis_url, queue, [body], priority=body["p"])
    orders = {}
    for name, transport in (("kombu", None), ("bridge", REDIS_TRANSPORT)):
        seen: list[int] = []
        with connect(redis_url, queue, transport=transport) as conn:
            channel = conn.default_channel

            def on_message(body: Any, message: Any, seen: list[int] = seen) -> None:
                seen.append(body["n"])
                message.ack()

            with Consumer(channel, [queue], callbacks=[on_message], prefetch_count=20):
                while len(seen) < len(bodies):
                    conn.drain_events(timeout=5)
        orders[name] = seen
        if name == "kombu":
            for body in bodies:  # the same messages again, for the bridge's transport
                publish(redis_url, queue, [body], priority=body["p"])
    assert orders["bridge"] == orders["kombu"]
    assert orders["kombu"] != list(range(len(bodies)))  # priorities did reorder them


def test_a_message_not_in_kombus_format_ends_the_batch_and_stays(
    redis_url: str, queue: Queue, client: redis.Redis
) -> None:
    publish(redis_url, queue, [{"n": 0}, {"n": 1}])
    client.lpush(queue.name, b'{"not": "kombu"}')  # behind the two kombu messages
    publish(redis_url, queue, [{"n": 2}])
    seen: list[int] = []
    with connect(redis_url, queue) as conn:
        channel = conn.default_channel
        with Consumer(channel, [queue], callbacks=[lambda b, m: seen.append(b["n"])],
                      prefetch_count=PREFETCH):  # fmt: skip
            conn.drain_events(timeout=5)
            assert seen == [0, 1]
            assert client.lrange(queue.name, 0, -1)[-1] == b'{"not": "kombu"}'
            assert client.llen(queue.name) == 2


def test_a_delivery_that_fails_sends_the_rest_of_the_batch_back_in_order(
    redis_url: str, queue: Queue, client: redis.Redis
) -> None:
    publish(redis_url, queue, [{"n": n} for n in range(10)])
    seen: list[int] = []

    def on_message(body: Any, message: Any) -> None:
        seen.append(body["n"])
        if body["n"] == 2:
            raise RuntimeError("consumer broke")

    with connect(redis_url, queue) as conn:
        channel = conn.default_channel
        with Consumer(channel, [queue], callbacks=[on_message], prefetch_count=PREFETCH):
            with pytest.raises(RuntimeError, match="consumer broke"):
                conn.drain_events(timeout=5)
            assert seen == [0, 1, 2]
            assert len(unacked_tags(client, channel)) == 3  # delivered, not acknowledged
            rest = [number(raw) for raw in reversed(client.lrange(queue.name, 0, -1))]
            assert rest == list(range(3, 10))  # next in line, in their order


KILLED_CONSUMER = textwrap.dedent(
    """
    import json, os, sys
    from kombu import Connection, Consumer, Exchange, Queue
    url, name, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name, max_priority=9)
    seen = []
    def on_message(body, message):
        seen.append(body["n"])
        if len(seen) == 3:
            os._exit(9)  # killed in the middle of delivering its batch
    with Connection(url, transport="bridge.worker.broker:RedisTransport",
                    transport_options=options) as conn:
        with Consumer(conn.default_channel, [queue], callbacks=[on_message],
                      prefetch_count=8):
            conn.drain_events(timeout=10)
    """
)


def test_a_consumer_killed_in_the_middle_of_a_batch_loses_nothing(
    redis_url: str, queue: Queue, client: redis.Redis
) -> None:
    publish(redis_url, queue, [{"n": n} for n in range(20)])
    done = subprocess.run([sys.executable, "-c", KILLED_CONSUMER, redis_url, queue.name,
                           json.dumps(private(queue))],
                          env=dict(os.environ), timeout=60, capture_output=True)  # fmt: skip
    assert done.returncode == 9, done.stderr.decode()[-2000:]
    assert client.llen(queue.name) == 20 - PREFETCH
    # kombu's own transport restores them: the records are kombu's format
    with connect(redis_url, queue, transport=None, visibility_timeout=0) as conn:
        channel = conn.default_channel
        assert len(unacked_tags(client, channel)) == PREFETCH  # all recorded, none lost
        channel.qos.restore_visible(num=100)
        seen: list[int] = []

        def on_message(body: Any, message: Any) -> None:
            seen.append(body["n"])
            message.ack()

        with Consumer(channel, [queue], callbacks=[on_message], prefetch_count=PREFETCH):
            while len(seen) < 20:
                conn.drain_events(timeout=5)
        assert sorted(seen) == list(range(20))  # each exactly once
        assert client.llen(queue.name) == 0
        assert unacked_tags(client, channel) == set()


def test_acknowledgements_on_the_loop_leave_the_records_at_its_next_turn_or_at_close(
    redis_url: str, queue: Queue, client: redis.Redis
) -> None:
    publish(redis_url, queue, [{"n": n} for n in range(6)])
    seen: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        seen.append(message)
        if body["n"] < 4:
            message.ack()  # on the loop's thread: waits for its next turn

    with on_a_loop(redis_url, queue, on_message) as (hub, channel):
        while not seen:
            hub.run_once()
        tags = [m.delivery_tag for m in seen]
        assert len(tags) == 6  # one batch
        assert unacked_tags(client, channel) == set(tags)  # acknowledged, not yet removed
        assert channel.qos.can_consume_max_estimate() == PREFETCH - 2  # credit back
        hub.run_once()
        assert unacked_tags(client, channel) == set(tags[4:])
        seen[4].ack()  # no turn comes: closing the channel removes it
        channel.close()
        assert unacked_tags(client, channel) == set()
        assert [number(raw) for raw in client.lrange(queue.name, 0, -1)] == [5]


def test_a_redis_that_refuses_scripts_gets_kombus_one_at_a_time(
    redis_url: str, queue: Queue, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    user = f"noscripts-{uuid.uuid4().hex[:8]}"
    client.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                       commands=["+@all", "-@scripting"])  # fmt: skip
    try:
        publish(redis_url, queue, [{"n": n} for n in range(4)])
        restricted = redis_url.replace("redis://", f"redis://{user}:pw@", 1)
        seen: list[int] = []

        def on_message(body: Any, message: Any) -> None:
            seen.append(body["n"])
            message.ack()

        with connect(restricted, queue) as conn, caplog.at_level("WARNING", "bridge.broker"):
            channel = conn.default_channel
            with Consumer(channel, [queue], callbacks=[on_message], prefetch_count=PREFETCH):
                conn.drain_events(timeout=5)
                assert seen == [0]  # one at a time, nothing lost
                while len(seen) < 4:
                    conn.drain_events(timeout=5)
            assert seen == [0, 1, 2, 3]
            assert unacked_tags(client, channel) == set()
        warned = [r for r in caplog.records if "refused the batch pop" in r.getMessage()]
        assert len(warned) == 1  # said once, not per message
    finally:
        client.acl_deluser(user)


def test_a_consumer_without_acknowledgements_leaves_no_unacked_records(
    redis_url: str, queue: Queue, client: redis.Redis
) -> None:
    """Celery's control replies (``inspect``, ``ping``) are consumed with ``no_ack``:
    kombu records none of them, and a record nobody removes would come back after the
    visibility timeout."""
    publish(redis_url, queue, [{"n": n} for n in range(3)])
    seen: list[int] = []
    with connect(redis_url, queue) as conn:
        channel = conn.default_channel
        with Consumer(channel, [queue], callbacks=[lambda b, m: seen.append(b["n"])],
                      no_ack=True):  # fmt: skip
            while len(seen) < 3:
                conn.drain_events(timeout=5)
        assert seen == [0, 1, 2]
        assert unacked_tags(client, channel) == set()
        assert client.zcard(channel.unacked_index_key) == 0


def test_a_failed_removal_on_the_loop_is_reported_and_the_loop_goes_on(
    redis_url: str, queue: Queue, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    publish(redis_url, queue, [{"n": n} for n in range(3)])
    seen: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        seen.append(body["n"])
        message.ack()

    with on_a_loop(redis_url, queue, on_message) as (hub, channel):
        while not seen:
            hub.run_once()
        client.delete(channel.unacked_index_key)
        client.set(channel.unacked_index_key, "not a sorted set")  # the ZREM fails
        with caplog.at_level("WARNING", "bridge.broker"):
            hub.run_once()  # the flush fails: reported, not raised
        assert any("ResponseError" in r.getMessage() for r in caplog.records)
        client.delete(channel.unacked_index_key)
        publish(redis_url, queue, [{"n": 3}])
        while len(seen) < 4:
            hub.run_once()  # the loop still consumes
        hub.run_once()
        assert unacked_tags(client, channel) == set()  # the next flush worked


def test_a_script_that_fails_once_gives_the_message_back_and_keeps_the_batches(
    redis_url: str, queue: Queue, client: redis.Redis
) -> None:
    publish(redis_url, queue, [{"n": n} for n in range(6)])
    seen: list[int] = []
    with connect(redis_url, queue) as conn:
        channel = conn.default_channel
        client.set(channel.unacked_key, "not a hash")  # the pop's HSET fails
        with Consumer(channel, [queue], callbacks=[lambda b, m: seen.append(b["n"])],
                      prefetch_count=PREFETCH):  # fmt: skip
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                conn.drain_events(timeout=5)
            assert seen == []
            assert client.llen(queue.name) == 6  # the message BRPOP took is back
            client.delete(channel.unacked_key)
            conn.drain_events(timeout=5)
            assert seen == [0, 1, 2, 3, 4, 5]  # in its place, still in one batch
            assert len(unacked_tags(client, channel)) == 6
