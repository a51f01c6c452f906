"""The core's Redis rules as a contract: the ledger's scripts, leases, breakers, budgets.

Run against fakeredis (with its Lua) in the unit tier (tests/unit/core/test_ledger.py) and
against a real Redis in the integration tier (tests/integration/bridge/test_ledger.py):
the same tests, so the fake cannot drift from the real thing unnoticed. Every test takes
a ``redis`` client and a fresh ``keys`` schema (its own prefix).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from bridge.core.breaker import CLOSED, HALF_OPEN, OPEN, Breakers
from bridge.core.budget import Budgets, Limit
from bridge.core.keys import Keys
from bridge.core.leases import Leases
from bridge.core.ledger import (
    RELEASE_FOR_REPLAY,
    ClaimKind,
    Delivery,
    Ledger,
    cancel_arguments,
)
from bridge.core.model import Continuation, Request


def request(request_id: str = "r1", **changes: Any) -> Request:
    fields: dict[str, Any] = {"id": request_id, "route": "echo", "input": {"n": 1},
                              "mode": "poll", "accepted_at": 1000.0}  # fmt: skip
    fields.update(changes)
    return Request(**fields)


async def test_a_claim_is_once_and_a_redelivery_is_the_same_request(
    redis: Redis, keys: Keys
) -> None:
    ledger = Ledger(redis, keys)
    first = await ledger.claim(request(), "w1")
    again = await ledger.claim(request(accepted_at=2000.0), "w2")  # redelivered later
    other = await ledger.claim(request(input={"n": 2}), "w3")
    assert (first.kind, again.kind, other.kind) == (
        ClaimKind.NEW, ClaimKind.SAME, ClaimKind.CONFLICT,
    )  # fmt: skip
    assert await ledger.inflight("echo") == {"r1"}
    record = await ledger.get("r1")
    assert (record.state, record.owner, record.created) == ("accepted", "w1", 1000.0)
    assert record.to_request() == request()


async def test_submission_steps_count_and_happen_once(redis: Redis, keys: Keys) -> None:
    ledger = Ledger(redis, keys)
    await ledger.claim(request(), "w1")
    grant = await ledger.mark_submitting("r1", "w1")
    assert (grant.granted, grant.submissions) == (True, 1)
    assert (await ledger.mark_submitting("r1", "w2")).granted is False  # never twice
    assert await ledger.count_submission("r1", 1) == 2
    marked = await ledger.mark_submitted("r1", "job-1")
    assert (marked.recorded, marked.cancel_requested) == (True, False)
    again = await ledger.mark_submitted("r1", "job-2")
    assert (again.recorded, again.state) == (False, "submitted")
    record = await ledger.get("r1")
    assert (record.state, record.job_id, record.submissions) == ("submitted", "job-1", 2)


async def test_reopen_allows_one_more_submission_only_from_submitting(
    redis: Redis, keys: Keys
) -> None:
    ledger = Ledger(redis, keys)
    await ledger.claim(request(), "w1")
    assert await ledger.reopen("r1", "echo") is False  # accepted: nothing to reopen
    await ledger.mark_submitting("r1", "w1")
    assert await ledger.reopen("r1", "echo") is True
    assert (await ledger.mark_submitting("r1", "w2")).granted is True


async def test_one_final_reply_among_many_finishers(redis: Redis, keys: Keys) -> None:
    ledger = Ledger(redis, keys)
    req = request(reply_to=keys.reply("r1"))
    await ledger.claim(req, "w1")
    results = await asyncio.gather(*(
        ledger.finalize(req, {"n": n}, reply_ttl_s=60, result_ttl_s=60, finisher=f"f{n}")
        for n in range(20)
    ))  # fmt: skip
    assert sum(r.won for r in results) == 1
    assert await redis.llen(keys.reply("r1")) == 1
    assert await ledger.inflight("echo") == set()
    winner = next(n for n, r in enumerate(results) if r.won)
    # The winner asking again (its answer lost) is told it won; nothing is written twice.
    assert await ledger.finalize(
        req, {"n": winner}, reply_ttl_s=60, result_ttl_s=60, finisher=f"f{winner}"
    ) is Delivery.REPLIED  # fmt: skip
    assert await redis.llen(keys.reply("r1")) == 1
    assert await ledger.final_reply("r1") == {"n": winner}
    assert 0 < await redis.ttl(keys.request("r1")) <= 60


@pytest.mark.parametrize("kind", ["stream", "hash", "string"])
async def test_a_reply_target_that_is_not_a_list_is_never_written(
    redis: Redis, keys: Keys, kind: str
) -> None:
    target = f"{keys.prefix}-theirs"
    if kind == "stream":
        await redis.xadd(target, {"f": "v"})
    elif kind == "hash":
        await redis.hset(target, "f", "v")
    else:
        await redis.set(target, "v")
    before = await redis.dump(target)
    ledger = Ledger(redis, keys)
    req = request(reply_to=target)
    await ledger.claim(req, "w1")
    delivery = await ledger.finalize(req, {"x": 1}, reply_ttl_s=60, result_ttl_s=60,
                                     finisher="f")  # fmt: skip
    assert delivery is Delivery.REFUSED_TARGET
    assert (await ledger.get("r1")).state == "final"  # finalized all the same
    assert await redis.dump(target) == before
    assert await redis.ttl(target) == -1  # no EXPIRE either
    assert await ledger.push_chunk(request("r2", reply_to=target), {"c": 1}, 60) == -1
    await ledger.claim(request("r3", reply_to=target), "w1")
    assert await ledger.push_chunk(request("r3", reply_to=target), {"c": 1}, 60) == -2
    assert await ledger.push_reply(target, {"x": 1}, 60) is False
    await redis.delete(target)


async def test_chunks_are_numbered_and_never_after_the_result(redis: Redis, keys: Keys) -> None:
    ledger = Ledger(redis, keys)
    req = request("r3", reply_to=keys.reply("r3"))
    await ledger.claim(req, "w1")
    assert await ledger.push_chunk(req, {"t": "a"}, 60) == 0
    assert await ledger.push_chunk(req, ["b", 2.5, None], 60) == 1
    await ledger.finalize(req, {"type": "result"}, reply_ttl_s=60, result_ttl_s=60,
                          finisher="f")  # fmt: skip
    assert await ledger.push_chunk(req, {"late": True}, 60) == -1
    messages = [json.loads(m) for m in await redis.lrange(keys.reply("r3"), 0, -1)]
    assert messages == [
        {"type": "chunk", "id": "r3", "seq": 0, "output": {"t": "a"}},
        {"type": "chunk", "id": "r3", "seq": 1, "output": ["b", 2.5, None]},
        {"type": "result"},
    ]


async def test_a_cancel_before_arrival_leaves_a_one_day_tombstone(redis: Redis, keys: Keys) -> None:
    ledger = Ledger(redis, keys)
    assert await ledger.request_cancel("r4") == "unknown"
    assert await ledger.request_cancel("r4") == "unknown"
    assert 86_000 < await redis.ttl(keys.request("r4")) <= 86_400
    claim = await ledger.claim(request("r4"), "w1")
    assert (claim.kind, claim.cancel_requested) == (ClaimKind.NEW, True)
    assert (await ledger.get("r4")).cancel is True


async def test_a_revoke_by_task_id_reaches_the_request_before_and_after_arrival(
    redis: Redis, keys: Keys
) -> None:
    ledger = Ledger(redis, keys)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.cancel_channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    late = request("req-5", continuation=Continuation(task_id="task-5"))
    await ledger.claim(late, "w1")
    assert await ledger.request_cancel("task-5") == "accepted"
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert message is not None
    assert message["data"] == b"req-5"
    assert (await ledger.get("req-5")).cancel is True
    # Revoked before it arrived: the claim under its request id sees the task's tombstone.
    assert await ledger.request_cancel("task-6") == "unknown"
    early = request("req-6", continuation=Continuation(task_id="task-6"))
    assert (await ledger.claim(early, "w1")).cancel_requested is True
    await pubsub.aclose()


async def test_replay_releases_only_the_record_its_dead_letter_names(
    redis: Redis, keys: Keys
) -> None:
    ledger = Ledger(redis, keys)
    release = RELEASE_FOR_REPLAY.bind(redis)
    req = request()
    await ledger.claim(req, "w1")
    await ledger.finalize(req, {"x": 1}, reply_ttl_s=60, result_ttl_s=60, finisher="mine")
    state, _ = await release(req=keys.request("r1"), finisher="someone-else")
    assert state == b"taken"
    assert (await ledger.get("r1")).state == "final"
    state, recorded = await release(req=keys.request("r1"), finisher="mine")
    assert state == b"released"
    assert json.loads(recorded)["input"] == {"n": 1}
    assert (await ledger.get("r1")).state is None
    assert (await release(req=keys.request("r1"), finisher="mine"))[0] == b"gone"


async def test_leases_adopt_only_the_requests_of_dead_owners(redis: Redis, keys: Keys) -> None:
    ledger = Ledger(redis, keys)
    alive = Leases(redis, keys, "alive", ttl_s=30)
    dead = Leases(redis, keys, "dead", ttl_s=30)
    await alive.renew()
    await dead.renew()
    await ledger.claim(request("a"), "alive")
    await ledger.claim(request("d"), "dead")
    await ledger.claim(request("f"), "dead")
    await ledger.finalize(request("f"), {}, reply_ttl_s=60, result_ttl_s=60, finisher="x")
    assert (await alive.adopt(["echo"], 100)).adopted == []  # everyone alive: cheap no-op
    await dead.drop()
    found = await alive.adopt(["echo"], 100)
    assert found.adopted == ["d"]
    assert (await ledger.get("d")).owner == "alive"
    full = await alive.adopt(["echo"], 100, full=True)
    assert (full.adopted, sorted(full.own)) == ([], ["a", "d"])


def named_client(redis: Redis, name: str | None) -> Redis:
    """Another connection to the same server (real or fake), named ``name``."""
    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "client_name": name}
    own_pool = type(pool)(connection_class=pool.connection_class, **kwargs)
    return Redis(connection_pool=own_pool, single_connection_client=True)


async def age_renewals(redis: Redis, keys: Keys, **seconds_ago: float) -> None:
    """Make owners' last renewals that old (by Redis' clock, the one leases use)."""
    secs, micros = await redis.time()
    now_ms = secs * 1000 + micros // 1000
    await redis.zadd(keys.owners, {o: now_ms - s * 1000 for o, s in seconds_ago.items()})


async def test_a_connected_owner_is_not_adopted_from_and_a_vanished_one_is(
    redis: Redis, keys: Keys
) -> None:
    ledger = Ledger(redis, keys)
    starved_presence = named_client(redis, keys.presence("starved"))
    killed_presence = named_client(redis, None)  # its named connection died with it
    me = Leases(redis, keys, "me", ttl_s=30, adopt_after_s=2, hung_s=60)
    starved = Leases(redis, keys, "starved", ttl_s=30, presence=starved_presence,
                     adopt_after_s=2, hung_s=60)  # fmt: skip
    killed = Leases(redis, keys, "killed", ttl_s=30, presence=killed_presence,
                    adopt_after_s=2, hung_s=60)  # fmt: skip
    legacy = Leases(redis, keys, "legacy", ttl_s=30, adopt_after_s=2, hung_s=60)
    try:
        for lease in (me, starved, killed, legacy):
            await lease.renew()
        for n, owner in enumerate(("starved", "killed", "legacy")):
            await ledger.claim(request(f"q{n}"), owner)
        assert "starved" in await me.present()
        assert (await me.adopt(["echo"], 100)).adopted == []  # all renewed just now
        await age_renewals(redis, keys, starved=10, killed=10, legacy=10)
        found = await me.adopt(["echo"], 100)
        # killed: no presence connection and late; starved: late but connected; legacy:
        # no presence connection to judge by, its lease (30 s) still stands.
        assert (found.adopted, found.suspects) == (["q1"], ["starved"])
        assert (await ledger.get("q1")).owner == "me"
        await age_renewals(redis, keys, starved=61)  # connected, silent past hung_s: hung
        assert (await me.adopt(["echo"], 100)).adopted == ["q0"]
    finally:
        for client in (starved_presence, killed_presence):
            await client.aclose()
            await client.connection_pool.disconnect()


async def test_the_breaker_opens_probes_and_closes(redis: Redis, keys: Keys) -> None:
    now = [1000.0]
    breakers = Breakers(redis, keys, threshold=3, open_s=30.0, cache_s=0.0,
                        clock=lambda: now[0])  # fmt: skip
    for _ in range(2):
        assert await breakers.record("ep", False) == CLOSED
    assert await breakers.record("ep", False) == OPEN
    state = await breakers.get("ep")
    assert (state.state, state.retry_in(30.0, now[0])) == (OPEN, 30.0)
    now[0] += 30.0
    assert (await breakers.get("ep")).state == HALF_OPEN
    assert await breakers.try_probe("ep") is True
    assert await breakers.try_probe("ep") is False  # one probe at a time
    assert await breakers.record("ep", True) == CLOSED
    assert (await breakers.get("ep")).failures == 0
    assert 0 < await redis.ttl(keys.breaker("ep")) <= 86_400


async def test_a_failed_probe_opens_the_breaker_again(redis: Redis, keys: Keys) -> None:
    now = [0.0]
    breakers = Breakers(redis, keys, threshold=1, open_s=10.0, cache_s=0.0,
                        clock=lambda: now[0])  # fmt: skip
    assert await breakers.record("ep", False) == OPEN
    now[0] = 10.0
    assert await breakers.record("ep", False) == OPEN
    assert (await breakers.get("ep")).opened_at == 10.0


async def test_a_budget_allows_90_percent_then_waits_out_the_window(
    redis: Redis, keys: Keys
) -> None:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        raise asyncio.CancelledError  # stop after the first wait: we only read its length

    budgets = Budgets(redis, {"ep": {"run": Limit(20, 10.0)}}, keys, sleep=fake_sleep)
    for _ in range(18):  # 90 % of 20
        assert await budgets.acquire("ep", "run") == 0.0
    assert await budgets.acquire("ep", "health") == 0.0  # no limit configured
    with pytest.raises(asyncio.CancelledError):
        await budgets.acquire("ep", "run")
    assert 12.0 < waits[0] <= 13.0  # the window + 3 s: until the oldest slot leaves it


async def test_the_cancel_script_takes_its_arguments_by_name(redis: Redis, keys: Keys) -> None:
    arguments = cancel_arguments(keys, "r9")
    assert arguments["req"] == keys.request("r9")
    assert arguments["alias"] == keys.task("r9")
    assert arguments["channel"] == keys.cancel_channel


async def test_a_busy_budget_takes_slots_ahead_and_never_exceeds_its_limit(
    redis: Redis, keys: Keys
) -> None:
    now = [0.0]
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        raise asyncio.CancelledError

    limit = Limit(1000, 10.0)  # 900 slots, taken 9 at a time
    budgets = Budgets(redis, {"ep": {"run": limit}}, keys, sleep=fake_sleep,
                      clock=lambda: now[0])  # fmt: skip
    for _ in range(limit.slots):
        assert await budgets.acquire("ep", "run") == 0.0
    assert budgets.calls == limit.slots // limit.chunk == 100
    assert await redis.zcard(keys.budget("ep", "run")) == limit.slots
    with pytest.raises(asyncio.CancelledError):
        await budgets.acquire("ep", "run")
    assert waits  # the 901st waits: never more than the budget


async def test_slots_taken_ahead_expire_unused(redis: Redis, keys: Keys) -> None:
    now = [0.0]
    budgets = Budgets(redis, {"ep": {"status": Limit(2000, 10.0)}}, keys,
                      clock=lambda: now[0])  # fmt: skip
    await budgets.acquire("ep", "status")
    now[0] += 5.0  # the slots taken with it are too old to be used now
    await budgets.acquire("ep", "status")
    assert budgets.calls == 2


async def test_a_claim_may_take_the_first_grant_unless_a_cancel_came_first(
    redis: Redis, keys: Keys
) -> None:
    ledger = Ledger(redis, keys)
    claim = await ledger.claim(request("g1"), "w1", grant=True)
    assert (claim.kind, claim.state) == (ClaimKind.NEW, "submitting")
    record = await ledger.get("g1")
    assert (record.state, record.submissions) == ("submitting", 1)
    assert (await ledger.mark_submitting("g1", "w2")).granted is False
    await ledger.request_cancel("g2")
    cancelled = await ledger.claim(request("g2"), "w1", grant=True)
    assert (cancelled.state, cancelled.cancel_requested) == ("accepted", True)


async def test_a_routes_slots_are_fleet_wide_and_freed_when_final_or_reopened(
    redis: Redis, keys: Keys
) -> None:
    ledger = Ledger(redis, keys)
    for n in range(4):
        await ledger.claim(request(f"s{n}"), "w1")
    first = await ledger.mark_submitting("s0", "w1", route="echo", cap=2)
    second = await ledger.mark_submitting("s1", "w2", route="echo", cap=2)  # another worker
    full = await ledger.mark_submitting("s2", "w3", route="echo", cap=2)
    assert (first.granted, second.granted) == (True, True)
    assert (full.granted, full.no_slot, full.submissions) == (False, True, 0)
    assert (await ledger.get("s2")).state == "accepted"  # untouched: it asks again later
    assert await redis.hgetall(keys.slots("echo")) == {b"s0": b"w1", b"s1": b"w2"}
    # A claim's grant takes a slot too, and none when the route is full.
    assert (await ledger.claim(request("s9"), "w1", grant=True, cap=2)).state == "accepted"
    await ledger.finalize(request("s0"), {}, reply_ttl_s=60, result_ttl_s=60, finisher="x")
    assert (await ledger.mark_submitting("s2", "w3", route="echo", cap=2)).granted is True
    assert (await ledger.mark_submitting("s3", "w3", route="echo", cap=2)).no_slot
    assert await ledger.reopen("s1", "echo") is True  # an ambiguous submit resumed
    assert (await ledger.mark_submitting("s3", "w3", route="echo", cap=2)).granted is True
    assert set(await redis.hkeys(keys.slots("echo"))) == {b"s2", b"s3"}
    # A request that holds one of the slots of a full route keeps it when it asks again.
    await redis.hset(keys.request("s3"), "state", "accepted")
    again = await ledger.mark_submitting("s3", "w4", route="echo", cap=2)
    assert (again.granted, again.submissions) == (True, 2)
    assert await redis.hlen(keys.slots("echo")) == 2


async def test_a_full_adopt_frees_the_slots_of_requests_no_longer_in_flight(
    redis: Redis, keys: Keys
) -> None:
    ledger = Ledger(redis, keys)
    await ledger.claim(request("held"), "w1", grant=True, cap=5)
    await redis.hset(keys.slots("echo"), "gone", "dead-worker")  # its record expired
    leases = Leases(redis, keys, "w1", ttl_s=30)
    await leases.renew()
    await leases.adopt(["echo"], 100)
    assert await redis.hlen(keys.slots("echo")) == 2  # only a full look sweeps
    await leases.adopt(["echo"], 100, full=True)
    assert await redis.hkeys(keys.slots("echo")) == [b"held"]
