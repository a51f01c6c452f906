"""The core's Redis rules on fakeredis (its Lua included): fast, no sockets. The same
contract runs against a real Redis in tests/integration/bridge/test_ledger.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import fakeredis
import pytest
from ledger_contract import *  # noqa: F403  (the contract's tests, collected here)
from redis.asyncio import Redis

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
