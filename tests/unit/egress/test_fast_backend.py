"""Which Redis client writes Celery results: the bridge's own when the backend is the
same Redis (its writes join the ledger's pipelines), a client of their own otherwise,
none for a backend that is not Redis."""

from __future__ import annotations

import asyncio

from celery import Celery
from redis.asyncio import Redis

from bridge.egress.celery_results import CeleryResults, fast_backend

URL = "redis://127.0.0.1:6379/0"


def test_the_bridges_client_when_the_backend_is_its_redis() -> None:
    ours = Redis.from_url(URL)
    app = Celery("t", broker=URL, backend=URL)
    assert fast_backend(app, (URL, ours)) is ours


def test_a_client_of_its_own_on_another_redis_or_database() -> None:
    ours = Redis.from_url(URL)
    other = "redis://127.0.0.1:6379/1"
    client = fast_backend(Celery("t", broker=URL, backend=other), (URL, ours))
    assert client is not None
    assert client is not ours
    assert client.connection_pool.connection_kwargs["db"] == 1


def test_none_for_a_backend_that_is_not_redis() -> None:
    app = Celery("t", broker=URL, backend="cache+memory://")
    assert fast_backend(app, ("cache+memory://", Redis.from_url(URL))) is None


def test_a_shared_client_is_left_open_for_its_owner() -> None:
    """The writer closes only a client it opened (the ledger's outlives it)."""
    closed: list[str] = []

    class Tracked(Redis):
        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            closed.append("closed")

    app = Celery("t", broker=URL, backend=URL)
    asyncio.run(CeleryResults(app, Tracked.from_url(URL), owned=False).aclose())
    assert closed == []
    asyncio.run(CeleryResults(app, Tracked.from_url(URL)).aclose())
    assert closed == ["closed"]
