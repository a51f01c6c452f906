"""The ledger's once-only rules, against a real Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from bridge.worker.budget import Budgets, Limit, classify
from bridge.worker.ledger import Ledger


@pytest.fixture
async def ledger(redis_url: str) -> AsyncIterator[Ledger]:
    client = Redis.from_url(redis_url)
    prefix = f"lt-{uuid.uuid4().hex[:8]}"
    yield Ledger(client, prefix)
    keys = [k async for k in client.scan_iter(f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_claim_is_once_and_duplicates_see_the_state(ledger: Ledger) -> None:
    first = await ledger.claim("r1", "echo", {"input": {}}, "w1")
    second = await ledger.claim("r1", "echo", {"input": {}}, "w2")
    assert (first.new, second.new, second.state) == (True, False, "accepted")
    assert await ledger.inflight("echo") == {"r1"}


async def test_submit_steps_and_single_final_reply(ledger: Ledger) -> None:
    await ledger.claim("r2", "echo", {}, "w1")
    assert await ledger.mark_submitting("r2", "w1") == ("ok", False)
    assert (await ledger.mark_submitting("r2", "w2"))[0] == "submitting"  # never twice
    assert await ledger.mark_submitted("r2", "job-1") == ("ok", False)
    reply_to = f"{ledger.prefix}:reply"
    results = await asyncio.gather(
        *(
            ledger.finalize("r2", "echo", {"n": n}, reply_to=reply_to, reply_ttl_s=60,
                            result_ttl_s=60)
            for n in range(20)
        )
    )  # fmt: skip
    assert results.count(True) == 1
    assert await ledger.redis.llen(reply_to) == 1
    assert await ledger.inflight("echo") == set()
    record = await ledger.get("r2")
    assert (record["state"], record["job_id"]) == ("final", "job-1")
    assert await ledger.final_reply("r2") == json.loads(await ledger.redis.lindex(reply_to, 0))


async def test_chunks_are_numbered_and_never_after_the_result(ledger: Ledger) -> None:
    await ledger.claim("r3", "s", {}, "w1")
    reply_to = f"{ledger.prefix}:r3"
    assert await ledger.push_chunk("r3", reply_to, {"t": "a"}, 60) == 0
    assert await ledger.push_chunk("r3", reply_to, ["b", 2.5, None], 60) == 1
    await ledger.finalize("r3", "s", {"type": "result"}, reply_to=reply_to, reply_ttl_s=60,
                          result_ttl_s=60)  # fmt: skip
    assert await ledger.push_chunk("r3", reply_to, {"late": True}, 60) == -1
    messages = [json.loads(m) for m in await ledger.redis.lrange(reply_to, 0, -1)]
    assert messages == [
        {"type": "chunk", "id": "r3", "seq": 0, "output": {"t": "a"}},
        {"type": "chunk", "id": "r3", "seq": 1, "output": ["b", 2.5, None]},
        {"type": "result"},
    ]


async def test_cancel_before_arrival_leaves_a_tombstone(ledger: Ledger) -> None:
    assert await ledger.request_cancel("r4") == "unknown"
    assert await ledger.request_cancel("r4") == "unknown"
    claim = await ledger.claim("r4", "echo", {}, "w1")
    assert (claim.new, claim.cancel_requested) == (True, True)


async def test_cancel_by_celery_task_id_reaches_the_request(ledger: Ledger) -> None:
    await ledger.claim("req-5", "echo", {}, "w1", task_id="task-5")
    pubsub = ledger.redis.pubsub()
    await pubsub.subscribe(ledger.cancel_channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    assert await ledger.request_cancel("task-5") == "accepted"
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert message is not None
    assert message["data"] == b"req-5"
    assert (await ledger.get("req-5"))["cancel"] == "1"
    await pubsub.aclose()


async def test_budget_allows_90_percent_then_waits(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        raise asyncio.CancelledError  # stop after the first wait: we only read its length

    prefix = f"bt-{uuid.uuid4().hex[:8]}"
    budgets = Budgets(client, {"ep": {"run": Limit(20, 10.0)}}, prefix, sleep=fake_sleep)
    try:
        for _ in range(18):  # 90 % of 20
            assert await budgets.acquire("ep", "run") == 0.0
        assert await budgets.acquire("ep", "health") == 0.0  # no limit configured
        with pytest.raises(asyncio.CancelledError):
            await budgets.acquire("ep", "run")
        assert 12.0 < waits[0] <= 13.0  # the window + 3 s: until the oldest slot leaves it
    finally:
        await client.delete(f"{prefix}:budget:ep:run")
        await client.aclose()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/ep1/run", ("ep1", "run")),
        ("/v2/ep1/status/abc-u1", ("ep1", "status")),
        ("/v2/ep1/status-sync/abc", ("ep1", "status-sync")),
        ("/prefix/v2/ep1/purge-queue", ("ep1", "purge-queue")),
        ("/v2/ep1/health", None),
        ("/graphql", None),
    ],
)
def test_classify(path: str, expected: tuple[str, str] | None) -> None:
    assert classify(path) == expected
