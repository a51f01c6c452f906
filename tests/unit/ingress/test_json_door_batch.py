"""The JSON door handles a run of new requests together: their ledger claims go to Redis
in one pipeline, in stream order; refusals keep the stream's order; a Redis failure of
one entry leaves it pending and acknowledges the others."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.core.keys import keys_for
from bridge.core.ledger import CLAIM, Ledger
from bridge.core.model import Admitted, Refusal, Request
from bridge.core.scripts import batcher_for
from bridge.ingress.admission import Admission
from bridge.ingress.json_door import JsonDoor
from bridge.settings import BridgeSettings, RouteConfig


@pytest.fixture(autouse=True)
def _no_bridge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


class Door:
    """A JSON door on fakeredis whose accept claims in the ledger, as the tracker does."""

    def __init__(self, redis: Redis, fail: set[str] | None = None) -> None:
        prefix = f"ut-{uuid.uuid4().hex[:8]}"
        self.settings = BridgeSettings(
            routes={"echo": RouteConfig(endpoint_id="echo")},
            key_prefix=prefix,
            requests_stream=f"{prefix}:requests",
            dlq_stream=f"{prefix}:dlq",
        )
        self.keys = keys_for(self.settings)
        self.redis = redis
        self.ledger = Ledger(redis, self.keys)
        self.fail = fail or set()
        self.started: list[str] = []
        self.events: list[str] = []
        self.door = JsonDoor(
            redis, self.settings, self.keys, self.ledger, Admission(self.settings),
            accept=self.accept, refuse=self.refuse, dead_letter=self.dead_letter,
            backlog=lambda: 0, consumer="c1",
        )  # fmt: skip

    async def accept(self, request: Request) -> Admitted:
        self.started.append(request.id)
        if request.id in self.fail:
            raise RedisConnectionError("lost")
        await self.ledger.claim(request, "c1")
        self.events.append(f"accepted {request.id}")
        return Admitted.ACCEPTED

    async def refuse(self, refusal: Refusal) -> None:
        self.events.append(f"refused {refusal.request_id}")

    async def dead_letter(self, **_: Any) -> None:
        return None

    async def entries(self, *envelopes: dict[str, Any]) -> list[tuple[bytes, dict[bytes, bytes]]]:
        await self.door.ensure_groups()
        for envelope in envelopes:
            await self.redis.xadd(self.keys.requests_stream, {"payload": json.dumps(envelope)})
        reply = await self.redis.xreadgroup(
            self.settings.consumer_group, "c1", {self.keys.requests_stream: ">"}, count=100
        )
        return list(reply[0][1])


def new(request_id: str, route: str = "echo") -> dict[str, Any]:
    return {"id": request_id, "route": route, "input": {"n": 1}}


async def test_a_run_of_new_requests_claims_in_one_pipeline_in_stream_order(redis: Redis) -> None:
    door = Door(redis)
    ids = [f"r{i}" for i in range(20)]
    entries = await door.entries(*(new(i) for i in ids))
    await redis.script_load(CLAIM.source)  # known to Redis: no NOSCRIPT round
    before = batcher_for(redis).round_trips
    await door.door.handle_batch(door.keys.requests_stream, entries)
    assert door.started == ids
    assert batcher_for(redis).round_trips - before == 1  # the 20 claims, together
    assert await redis.xlen(door.keys.requests_stream) == 0  # all acknowledged, deleted
    for request_id in ids:
        assert (await door.ledger.get(request_id)).state == "accepted"


async def test_refusals_between_requests_keep_the_stream_order(redis: Redis) -> None:
    door = Door(redis)
    entries = await door.entries(new("a"), new("b"), new("x", route="nope"), new("c"))
    await door.door.handle_batch(door.keys.requests_stream, entries)
    assert door.events.index("refused x") > door.events.index("accepted a")
    assert door.events.index("refused x") > door.events.index("accepted b")
    assert door.events.index("refused x") < door.events.index("accepted c")


async def test_a_redis_failure_leaves_its_entry_pending_and_the_others_handled(
    redis: Redis,
) -> None:
    door = Door(redis, fail={"b"})
    entries = await door.entries(new("a"), new("b"), new("c"))
    with pytest.raises(RedisConnectionError):
        await door.door.handle_batch(door.keys.requests_stream, entries)
    assert sorted(door.events) == ["accepted a", "accepted c"]
    pending = await redis.xpending(door.keys.requests_stream, door.settings.consumer_group)
    assert pending["pending"] == 1  # b, to be read again
