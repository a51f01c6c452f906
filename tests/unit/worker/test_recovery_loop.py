"""Recovery's loop (one tick at a time, on fakeredis, with an injected clock): a dead
worker's requests are adopted on the next tick, except right after this process was cut
off from Redis itself (a restart, a failover): then the others get the adoption grace to
reconnect and renew first."""

from __future__ import annotations

import uuid
from typing import Any, cast

import fakeredis
import pytest
from redis.asyncio import Redis

from bridge.core.keys import Keys
from bridge.core.leases import Leases
from bridge.core.ledger import Ledger
from bridge.core.model import Request
from bridge.worker.recovery import Recovery
from bridge.worker.tracker import Tracker


class Resumer:
    """Stands in for the tracker: records what it is asked to resume."""

    def __init__(self) -> None:
        self.resumed: list[str] = []

    async def resume(self, request_id: str, *, own: bool = False) -> bool:
        self.resumed.append(request_id)
        return True


@pytest.fixture
async def world() -> Any:
    redis = fakeredis.FakeAsyncRedis()
    prefix = f"ut-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, f"{prefix}:requests", f"{prefix}:dlq")
    yield redis, keys
    await redis.aclose()


async def orphan(redis: Redis, keys: Keys) -> None:
    """A request whose worker stopped cleanly: no lease, its renewal marked dead."""
    dead = Leases(redis, keys, "dead", ttl_s=15)
    await dead.renew()
    request = Request(id="o1", route="echo", input={}, mode="poll", accepted_at=1.0)
    await Ledger(redis, keys).claim(request, "dead")
    await dead.drop()


def recovery(redis: Redis, keys: Keys, now: list[float]) -> tuple[Recovery, Resumer]:
    leases = Leases(redis, keys, "me", ttl_s=15, adopt_after_s=3.0)
    resumer = Resumer()
    loop = Recovery(leases, cast(Tracker, resumer), ["echo"], every_s=1.0,
                    full_every_s=600.0, clock=lambda: now[0])  # fmt: skip
    return loop, resumer


async def test_a_dead_workers_requests_are_adopted_on_the_next_tick(world: Any) -> None:
    redis, keys = world
    now = [100.0]
    loop, resumer = recovery(redis, keys, now)
    await loop.tick()
    await orphan(redis, keys)
    now[0] = 101.0
    await loop.tick()
    assert resumer.resumed == ["o1"]


async def test_back_from_a_redis_outage_it_waits_the_grace_before_adopting(
    world: Any,
) -> None:
    redis, keys = world
    now = [100.0]
    loop, resumer = recovery(redis, keys, now)
    await loop.tick()
    await orphan(redis, keys)
    now[0] = 110.0  # no renewal for 10 s: Redis was away (from here too)
    await loop.tick()
    now[0] = 112.9
    await loop.tick()
    assert resumer.resumed == []  # the others may still be reconnecting
    now[0] = 113.1
    await loop.tick()
    assert resumer.resumed == ["o1"]
