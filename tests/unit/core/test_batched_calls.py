"""Script calls on an asyncio client are batched per loop turn (bridge.core.scripts):
N calls made in one turn cost one round trip, run in the order they were made, and each
caller gets its own reply or its own error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from bridge.core.scripts import NamedScript, batcher_for

APPEND = NamedScript(
    "redis.call('RPUSH', key, value)\nreturn redis.call('LLEN', key)",
    keys=("key",),
    args=("value",),
)
FAILS_ON_BAD = NamedScript(
    "if value == 'bad' then return redis.error_reply('bad value') end\nreturn value",
    args=("value",),
)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = fakeredis.FakeAsyncRedis()
    for script in (APPEND, FAILS_ON_BAD):  # known to the server: no NOSCRIPT round
        await client.script_load(script.source)
    yield client
    await client.aclose()


def pipelines_sent(redis: Redis) -> int:
    """Pipelines the client sent: counted at its send, below the batcher."""
    return batcher_for(redis).round_trips


async def test_calls_made_in_one_turn_share_one_round_trip_in_order(redis: Redis) -> None:
    append = APPEND.bind(redis)
    before = pipelines_sent(redis)
    replies = await asyncio.gather(*(append(key="l", value=str(i)) for i in range(50)))
    assert replies == list(range(1, 51))  # run in the order they were made
    assert pipelines_sent(redis) - before == 1
    assert await redis.lrange("l", 0, -1) == [str(i).encode() for i in range(50)]


async def test_calls_from_many_tasks_woken_together_are_batched(redis: Redis) -> None:
    append = APPEND.bind(redis)
    go = asyncio.Event()

    async def one(i: int) -> int:
        await go.wait()
        return int(await append(key="l", value=str(i)))

    tasks = [asyncio.create_task(one(i)) for i in range(20)]
    await asyncio.sleep(0)  # every task now waits on the event
    before = pipelines_sent(redis)
    go.set()
    assert sorted(await asyncio.gather(*tasks)) == list(range(1, 21))
    assert pipelines_sent(redis) - before == 1


async def test_calls_in_later_turns_are_sent_on_their_own(redis: Redis) -> None:
    append = APPEND.bind(redis)
    before = pipelines_sent(redis)
    assert await append(key="l", value="a") == 1
    assert await append(key="l", value="b") == 2
    assert pipelines_sent(redis) - before == 2


async def test_an_error_reaches_only_its_caller(redis: Redis) -> None:
    check = FAILS_ON_BAD.bind(redis)
    replies = await asyncio.gather(
        check(value="a"), check(value="bad"), check(value="c"), return_exceptions=True
    )
    assert replies[0] == b"a"
    assert replies[2] == b"c"
    assert isinstance(replies[1], ResponseError)
    assert "bad value" in str(replies[1])


async def test_different_scripts_share_a_batch_and_unknown_scripts_are_loaded(
    redis: Redis,
) -> None:
    await redis.script_flush()
    append, check = APPEND.bind(redis), FAILS_ON_BAD.bind(redis)
    replies = await asyncio.gather(append(key="l", value="x"), check(value="y"))
    assert replies == [1, b"y"]
    assert await redis.script_exists(APPEND.sha, FAILS_ON_BAD.sha) == [True, True]


async def test_a_connection_error_reaches_every_caller_of_the_batch() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server)
    append = APPEND.bind(client)
    server.connected = False
    replies = await asyncio.gather(
        append(key="l", value="a"), append(key="l", value="b"), return_exceptions=True
    )
    assert all(isinstance(r, RedisConnectionError) for r in replies)
    server.connected = True
    assert await append(key="l", value="c") == 1  # the batcher goes on
    await client.aclose()


async def test_a_large_turn_is_split_into_bounded_pipelines(redis: Redis) -> None:
    append = APPEND.bind(redis)
    batcher = batcher_for(redis)
    batcher.max_batch = 10
    before = pipelines_sent(redis)
    replies = await asyncio.gather(*(append(key="l", value=str(i)) for i in range(25)))
    assert replies == list(range(1, 26))
    assert pipelines_sent(redis) - before == 3


async def test_arguments_are_still_checked_by_name(redis: Redis) -> None:
    with pytest.raises(TypeError, match="missing"):
        APPEND.bind(redis)(key="l")


async def test_plain_commands_join_the_scripts_pipeline_in_order(redis: Redis) -> None:
    append = APPEND.bind(redis)
    batch = batcher_for(redis)
    before = pipelines_sent(redis)
    stored = batch.command("SET", "k", "v", "EX", 60)
    pushed = append(key="l", value="x")
    published = batch.command("PUBLISH", "k", "v")
    read = batch.command("GET", "k")  # after the SET: the order is kept
    assert await asyncio.gather(stored, pushed, published, read) == [True, 1, 0, b"v"]
    assert pipelines_sent(redis) - before == 1
    assert 0 < await redis.ttl("k") <= 60


async def test_a_failing_plain_command_reaches_only_its_caller(redis: Redis) -> None:
    await redis.set("text", "not a list")
    batch = batcher_for(redis)
    replies = await asyncio.gather(
        batch.command("RPUSH", "text", "x"), batch.command("GET", "text"), return_exceptions=True
    )
    assert isinstance(replies[0], ResponseError)
    assert replies[1] == b"not a list"


def test_a_batch_left_by_a_stopped_loop_does_not_hold_up_the_next_loop() -> None:
    client = fakeredis.FakeAsyncRedis()
    append = APPEND.bind(client)
    first = asyncio.new_event_loop()

    def stop_then_call() -> None:
        first.stop()  # this turn is the loop's last: the batch is never sent
        append(key="l", value="lost")

    first.call_soon(stop_then_call)
    first.run_forever()
    first.close()

    async def on_a_new_loop() -> Any:
        reply = await asyncio.wait_for(append(key="l", value="kept"), timeout=5)
        await client.aclose()
        return reply

    assert asyncio.run(on_a_new_loop()) == 1


async def test_a_call_alone_in_its_turn_loads_an_unknown_script_too(redis: Redis) -> None:
    await redis.script_flush()
    assert await APPEND.bind(redis)(key="l", value="x") == 1
    with pytest.raises(ResponseError, match="bad value"):
        await FAILS_ON_BAD.bind(redis)(value="bad")


class Held:
    """Holds every pipeline of ``batcher`` until :meth:`release` (our own seam: the
    batcher's ``_execute``, below which the client sends the pipeline)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, redis: Redis) -> None:
        self.batcher = batcher_for(redis)
        self.gate = asyncio.Event()
        self.sizes: list[int] = []
        execute = self.batcher._execute

        async def held(calls: list[Any]) -> list[Any]:
            self.sizes.append(len(calls))
            await self.gate.wait()
            return await execute(calls)

        monkeypatch.setattr(self.batcher, "_execute", held)

    def release(self) -> None:
        self.gate.set()


async def turns(n: int) -> None:
    """Lets the loop run ``n`` turns (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_calls_made_while_a_pipeline_is_in_flight_leave_together_after_it(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    append = APPEND.bind(redis)
    held = Held(monkeypatch, redis)
    first = asyncio.ensure_future(append(key="l", value="0"))
    await turns(3)
    assert held.sizes == [1]  # in flight
    later = []
    for i in range(1, 6):  # each in a turn of its own
        later.append(asyncio.ensure_future(append(key="l", value=str(i))))
        await turns(2)
    assert held.sizes == [1]  # they wait for it
    held.release()
    assert await asyncio.wait_for(asyncio.gather(first, *later), timeout=5) == [1, 2, 3, 4, 5, 6]
    assert held.sizes == [1, 5]  # the five made meanwhile: one pipeline, in order
    assert await redis.lrange("l", 0, -1) == [str(i).encode() for i in range(6)]


async def test_an_idle_batcher_sends_at_once_after_a_batch_is_back(redis: Redis) -> None:
    append = APPEND.bind(redis)
    assert await append(key="l", value="a") == 1
    # nothing waits: the next call is not held back by the one before
    assert await asyncio.wait_for(append(key="l", value="b"), timeout=5) == 2


async def test_a_failed_pipeline_in_flight_does_not_strand_the_calls_waiting_for_it() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server)
    append = APPEND.bind(client)
    server.connected = False
    first = asyncio.ensure_future(append(key="l", value="a"))
    await turns(1)  # its pipeline leaves, to a Redis that is away
    waiting = asyncio.ensure_future(append(key="l", value="b"))
    with pytest.raises(RedisConnectionError):
        await first
    server.connected = True
    assert await asyncio.wait_for(waiting, timeout=5) == 1  # it went after the failure
    await client.aclose()


def test_a_loop_stopped_with_a_pipeline_in_flight_does_not_hold_up_the_next_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = fakeredis.FakeAsyncRedis()
    append = APPEND.bind(client)
    batcher = batcher_for(client)
    execute = batcher._execute
    first = asyncio.new_event_loop()

    async def never_back(calls: list[Any]) -> list[Any]:
        await first.create_future()  # the loop stops before this reply comes
        return []

    async def one_in_flight() -> None:
        append(key="l", value="lost")
        await turns(3)
        append(key="l", value="waits for the one in flight")

    monkeypatch.setattr(batcher, "_execute", never_back)
    first.run_until_complete(one_in_flight())
    first.close()
    monkeypatch.setattr(batcher, "_execute", execute)

    async def on_a_new_loop() -> Any:
        reply = await asyncio.wait_for(append(key="l", value="kept"), timeout=5)
        await client.aclose()
        return reply

    assert asyncio.run(on_a_new_loop()) == 1


async def test_a_pipeline_that_hangs_holds_the_next_calls_back_only_for_hold_s(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    append = APPEND.bind(redis)
    batcher = batcher_for(redis)
    execute = batcher._execute
    hung = asyncio.get_running_loop().create_future()

    async def first_hangs(calls: list[Any]) -> list[Any]:
        if not hung.done():
            hung.set_result(None)
            await asyncio.get_running_loop().create_future()  # never back
        return await execute(calls)

    monkeypatch.setattr(batcher, "_execute", first_hangs)
    batcher.hold_s = 0.0  # an injected interval: the hold ends at the next loop turn
    lost = asyncio.ensure_future(append(key="l", value="hangs"))
    await hung
    replies = [asyncio.ensure_future(append(key="l", value=v)) for v in ("a", "b")]
    assert await asyncio.wait_for(asyncio.gather(*replies), timeout=5) == [1, 2]
    assert await redis.lrange("l", 0, -1) == [b"a", b"b"]
    lost.cancel()
