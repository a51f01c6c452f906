"""What ``bridge top`` costs: one snapshot with N requests in flight, and the tally's
cost per finished request (counted in memory, added to Redis by a flush a second), on a
real Redis (keys under a private prefix, removed after).

    .venv/bin/python bench/fleet_view.py [--redis-url URL] [--in-flight 10000]

Not part of ``python -m bench`` (it has no target in DESIGN.md §5): its figures are the
ones docs/fleet-view.md quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import redis
from redis.asyncio import Redis as AsyncRedis

from bridge.core.keys import keys_for
from bridge.core.tally import Tally
from bridge.fleet import Fleet
from bridge.settings import BridgeSettings, RouteConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--in-flight", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    tag = f"fv-{uuid.uuid4().hex[:8]}"
    settings = BridgeSettings(
        redis_url=args.redis_url, key_prefix=tag, requests_stream=f"{tag}:requests",
        dlq_stream=f"{tag}:dlq", default_queue=tag, broker_url="amqp://unused",
        routes={f"r{i}": RouteConfig(endpoint_id=f"e{i}") for i in range(4)},
    )  # fmt: skip
    keys = keys_for(settings)
    client = redis.Redis.from_url(args.redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for n in range(args.in_flight):
            route, request_id = f"r{n % 4}", f"{tag}-{n}"
            pipe.sadd(keys.inflight(route), request_id)
            pipe.hset(keys.request(request_id), mapping={"state": "submitted", "owner": "w1"})
        pipe.execute()
        fleet = Fleet(settings, client)
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            snap = fleet.snapshot()
            times.append(time.perf_counter() - start)
        assert sum(r.at_endpoint for r in snap.routes) == args.in_flight
        print(f"snapshot, {args.in_flight} in flight: median {statistics.median(times) * 1000:.1f} "
              f"ms (wall, CLI side and Redis together)")  # fmt: skip

        async def tally_writes(n: int) -> tuple[float, float]:
            """CPU per request counted in memory, then for one flush of all of them."""
            aclient = AsyncRedis.from_url(args.redis_url)
            tally = Tally(aclient, keys, flush_s=3600)  # flushed below, by hand
            start = time.process_time()
            for i in range(n):
                tally.record("r0", "COMPLETED", 0.05 + i % 7 / 100)
            counted = (time.process_time() - start) / n
            start = time.process_time()
            await tally.flush()
            flushed = time.process_time() - start
            await aclient.aclose()
            return counted, flushed

        counted, flushed = asyncio.run(tally_writes(2000))
        print(
            f"tally per finished request: {counted * 1e6:.1f} µs of CPU to count it; "
            f"{flushed * 1e3:.2f} ms of CPU for the flush of 2,000 (one round trip)"
        )
    finally:
        for key in client.scan_iter(f"{tag}*"):
            client.delete(key)
        client.close()


if __name__ == "__main__":
    main()
