"""Redis memory per request (docs/redis.md's sizing figures).

Sends N requests of an input of SIZE bytes through the JSON door to the emulator's
``echo`` route (its output is its input), reads half the replies and leaves the other
half unread, then sums ``MEMORY USAGE … SAMPLES 0`` of every key the stack wrote, by
kind. Runs on its own stack (emulator, worker, Redis found or started privately); not a
``make bench`` target, as it measures size, not speed:

    .venv/bin/python bench/redis_sizing.py --requests 200 --size 100
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import redis

from bridge.devstack import running_stack
from bridge.emulator.testing import running_emulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--size", type=int, default=100, help="bytes of input per request")
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    n = args.requests
    with (
        running_emulator() as emu,
        running_stack(emu.url, redis_url=args.redis_url, beat=False) as stack,
    ):
        r = redis.Redis.from_url(stack.settings.redis_url)
        prompt = "x" * args.size

        def send(prefix: str, i: int) -> None:
            envelope = {"id": f"{prefix}-{i}", "route": "echo", "input": {"prompt": prompt},
                        "reply_to": f"{stack.tag}-{prefix}:{i}"}  # fmt: skip
            r.xadd(stack.settings.requests_stream, {"payload": json.dumps(envelope)})

        for i in range(n):
            send("read", i)
            send("unread", i)
        for i in range(n):
            if r.blpop([f"{stack.tag}-read:{i}"], 60) is None:
                raise SystemExit(f"request read-{i} got no reply")
        deadline = time.monotonic() + 60
        while sum(1 for _ in r.scan_iter(f"{stack.tag}-unread:*")) < n:
            if time.monotonic() > deadline:
                raise SystemExit("not every unread request was answered in 60 s")
            time.sleep(0.2)
        size: collections.Counter[str] = collections.Counter()
        count: collections.Counter[str] = collections.Counter()
        for raw in r.scan_iter(f"{stack.tag}*"):
            key = raw.decode()
            rest = key.removeprefix(stack.tag)
            kind = ("ledger record (bridge:req:{id})" if rest.startswith(":req:") else
                    "unread reply list" if rest.startswith("-unread:") else
                    "budget logs (bridge:budget:*)" if rest.startswith(":budget:") else
                    "other")  # fmt: skip
            size[kind] += int(r.memory_usage(key, samples=0) or 0)
            count[kind] += 1
        per = {"ledger record (bridge:req:{id})": 2 * n, "unread reply list": n}
        print(f"{n} + {n} requests, {args.size}-byte input (and output)")
        for kind in sorted(size, key=lambda k: -size[k]):
            each = f"{size[kind] / per[kind]:,.0f} B per request" if kind in per else ""
            print(f"  {kind:34} {count[kind]:6} keys {size[kind]:12,} B  {each}")


if __name__ == "__main__":
    main()
