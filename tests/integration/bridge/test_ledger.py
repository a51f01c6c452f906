"""The core's Redis rules against a real Redis: the same contract the unit tier runs on
fakeredis (tests/unit/core/ledger_contract.py)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bridge.core.keys import Keys

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "core"))
from ledger_contract import *  # noqa: F403  (the contract's tests, collected here)


@pytest.fixture
def keys() -> Keys:
    prefix = f"lt-{uuid.uuid4().hex[:8]}"
    return Keys(prefix, f"{prefix}:requests", f"{prefix}:dlq")


@pytest.fixture
async def redis(redis_url: str, keys: Keys) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    found = [k async for k in client.scan_iter(f"{keys.prefix}*")]
    if found:
        await client.delete(*found)
    await client.aclose()
