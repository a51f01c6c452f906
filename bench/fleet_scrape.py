"""What one scrape of the fleet metrics costs (bridge.core.fleet_metrics), by the number
of requests in flight on one route: ``python -m bench.fleet_scrape [--redis URL]``.

Not one of ``make bench``'s targets (it has no baseline to be a ratio of): a figure for
docs/monitoring.md. It fills a route's in-flight set with ledger records under a key
prefix of its own (half waiting, half submitted), times ``generate_latest`` of a registry
holding only the fleet collector, and deletes its keys.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis
from prometheus_client import CollectorRegistry, generate_latest

from bridge.core.fleet_metrics import FleetCollector
from bridge.core.keys import keys_for
from bridge.settings import BridgeSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--sizes", default="0,1000,10000")
    parser.add_argument("--scrapes", type=int, default=10)
    options = parser.parse_args()
    client = redis.Redis.from_url(options.redis)
    prefix = f"bench-fleet-{uuid.uuid4().hex[:8]}"
    settings = BridgeSettings.load(
        redis_url=options.redis, key_prefix=prefix,
        requests_stream=f"{prefix}:requests", dlq_stream=f"{prefix}:dlq",
    )  # fmt: skip
    keys = keys_for(settings)
    registry = CollectorRegistry()
    registry.register(FleetCollector(client, settings))
    filled, now = 0, time.time()
    try:
        for size in (int(s) for s in options.sizes.split(",")):
            pipe = client.pipeline(transaction=False)
            for i in range(filled, size):
                state = "accepted" if i % 2 else "submitted"
                pipe.hset(keys.request(f"r{i}"), mapping={"state": state, "created": now - i})
                pipe.sadd(keys.inflight("echo"), f"r{i}")
            pipe.execute()
            filled = max(filled, size)
            took = []
            for _ in range(options.scrapes):
                start = time.perf_counter()
                generate_latest(registry)
                took.append(time.perf_counter() - start)
            median, worst = statistics.median(took) * 1000, max(took) * 1000
            print(f"{filled:>7,} in flight on one route: scrape median {median:6.1f} ms, "
                  f"max {worst:6.1f} ms")  # fmt: skip
    finally:
        for key in client.scan_iter(f"{prefix}*", count=5000):
            client.delete(key)
        client.close()


if __name__ == "__main__":
    main()
