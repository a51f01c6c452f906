"""Workers with different route sets on one stream (issue 15.2): a request reaches a
worker that serves its route, wherever it was read; it is refused as unknown only when no
live worker serves its route."""

from __future__ import annotations

import json

from conftest import MakeBridge, start_worker, stop_processes, wait_ready

PER_ROUTE = 50


def test_two_workers_with_different_routes_serve_all_requests(make_bridge: MakeBridge) -> None:
    bridge = make_bridge(start=False)
    routes = json.loads(bridge.env["BRIDGE_ROUTES"])
    workers = []
    for name in ("echo", "stream"):
        env = {**bridge.env, "BRIDGE_ROUTES": json.dumps({name: routes[name]})}
        node = f"{name}-{bridge.node}"
        worker = start_worker(env, bridge.log, celery_args=("-n", node))
        workers.append(worker)
        wait_ready(bridge.app, worker, bridge.log, node=node)
    try:
        sent = []
        for k in range(PER_ROUTE):
            sent.append(bridge.producer.send("echo", {"k": k}))
            sent.append(bridge.producer.send("stream", {"n": 1}, mode="poll"))
        results = [bridge.result(reply_to, timeout=60) for _, reply_to in sent]
        assert [r["status"] for r in results] == ["COMPLETED"] * 2 * PER_ROUTE
        assert bridge.redis.xlen(bridge.settings.dlq_stream) == 0
        # A route nobody serves is still refused, once.
        _, reply_to = bridge.producer.send("fail", {"k": 1})
        refused = bridge.result(reply_to, timeout=30)
        assert (refused["status"], refused["reason"]) == ("REJECTED", "unknown_route")
    finally:
        stop_processes(workers)
