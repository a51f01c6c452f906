"""The core's Redis rules on fakeredis (its Lua included): fast, no sockets. The same
contract runs against a real Redis in tests/integration/bridge/test_ledger.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import fakeredis
import pytest
from fakeredis.commands_mixins import server_mixin
from ledger_contract import *  # noqa: F403  (the contract's tests, collected here)
from redis.asyncio import Redis

from bridge.core.budget import Budgets, Limit
from bridge.core.keys import Keys


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
def keys() -> Keys:
    prefix = f"ut-{uuid.uuid4().hex[:8]}"
    return Keys(prefix, f"{prefix}:requests", f"{prefix}:dlq")


@pytest.mark.parametrize("micros", [7, 86_400, 999_999])
async def test_budget_slots_are_scored_with_redis_time_in_microseconds(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch, micros: int
) -> None:
    """Redis' TIME as the script reads it, at a chosen microsecond (fakeredis reads
    ``time.time``): a slot's score is that instant exactly, zero-padded micros
    included, and a window later it is gone."""
    now = {"s": 1_796_000_000 + micros / 1e6}
    monkeypatch.setattr(server_mixin, "time", SimpleNamespace(time=lambda: now["s"]))
    budgets = Budgets(redis, {"ep": {"run": Limit(2_000, 10.0)}}, keys)
    await budgets.acquire("ep", "run")
    key = keys.budget("ep", "run")
    scores = {score for _, score in await redis.zrange(key, 0, -1, withscores=True)}
    assert scores == {1_796_000_000 * 1_000_000 + micros}
    assert await redis.zcard(key) == Limit(2_000, 10.0).chunk
    now["s"] += Limit(2_000, 10.0).span_us / 1e6 + 0.5
    budgets = Budgets(redis, {"ep": {"run": Limit(2_000, 10.0)}}, keys)  # nothing ahead
    await budgets.acquire("ep", "run")
    assert min(s for _, s in await redis.zrange(key, 0, -1, withscores=True)) > scores.pop()
