"""The webhook receiver on a real socket: a hint only, cheap for strangers. A wrong or
missing token is a 404 whatever the request's size; the body is never read (RunPod's
carries the job's input and output: only the token in the URL counts); a genuine call
publishes the request id on the wake channel and nothing else (a request id cannot pose
as a purge: purges have a channel of their own)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from bridge.core.keys import Keys
from bridge.core.ledger import Ledger
from bridge.core.model import Request
from bridge.ingress.webhooks import create_receiver


@pytest.fixture
async def served(redis_url: str) -> AsyncIterator[tuple[str, Redis, Keys]]:
    prefix = f"wr-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, f"{prefix}:requests", f"{prefix}:dlq")
    redis = Redis.from_url(redis_url)
    runner = web.AppRunner(create_receiver(redis, keys))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", redis, keys
    await runner.cleanup()
    found = [k async for k in redis.scan_iter(f"{prefix}*")]
    if found:
        await redis.delete(*found)
    await redis.aclose()


async def test_only_the_right_token_wakes_and_strangers_pay_nothing(
    served: tuple[str, Redis, Keys],
) -> None:
    base, redis, keys = served
    ledger = Ledger(redis, keys)
    request = Request("purge:echo", "echo", {"blob": "x" * 1_000_000}, "webhook")
    await ledger.claim(request, "w1", token="the-token")
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.wake_channel, keys.purge_channel)
    for _ in range(2):
        await pubsub.get_message(timeout=1)  # the subscribe confirmations
    async with aiohttp.ClientSession() as http:
        for query in ("", "?token=wrong", "?token=the-tokenX"):
            async with http.post(f"{base}/webhook/purge:echo{query}", json={}) as reply:
                assert reply.status == 404
        body = {"id": "job-1", "status": "COMPLETED", "output": "x" * 100_000}
        async with http.post(f"{base}/webhook/purge:echo?token=the-token", json=body) as reply:
            assert reply.status == 200
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert message is not None
    assert (message["channel"], message["data"]) == (keys.wake_channel.encode(), b"purge:echo")
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5) is None
    await pubsub.aclose()


async def test_many_strangers_cost_one_small_read_each(served: tuple[str, Redis, Keys]) -> None:
    base, redis, keys = served
    await Ledger(redis, keys).claim(
        Request("big", "echo", {"blob": "x" * 5_000_000}, "webhook"), "w1", token="t"
    )
    before = await redis.info("stats")
    async with aiohttp.ClientSession() as http:

        async def stranger() -> int:
            async with http.post(f"{base}/webhook/big?token=guess", json={}) as reply:
                return reply.status

        statuses = await asyncio.gather(*(stranger() for _ in range(50)))
    after = await redis.info("stats")
    assert statuses == [404] * 50
    # The token is read on its own: 50 misses move kilobytes, not 50 times 5 MB.
    assert after["total_net_output_bytes"] - before["total_net_output_bytes"] < 1_000_000
