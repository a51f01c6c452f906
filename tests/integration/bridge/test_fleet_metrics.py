"""The fleet's state on a real worker's /metrics (bridge.core.fleet_metrics): requests
waiting behind a route's cap, a breaker opened by a failing endpoint, a dead letter,
the worker's own lease, all read from Redis at scrape time."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from conftest import MakeBridge
from prometheus_client.parser import text_string_to_metric_families

from bridge.core.keys import keys_for
from bridge.core.ledger import request_json
from bridge.core.model import Request
from bridge.emulator.settings import EndpointConfig
from bridge.emulator.testing import EmulatorHandle, wait_until


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def endpoints(emulator: EmulatorHandle) -> Iterator[tuple[str, str]]:
    """Two endpoints of this test's own: one to hold jobs, one to fail."""
    made = [f"fm-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("slow", "dead")]
    for endpoint in made:
        config = EndpointConfig(id=endpoint, name=endpoint, templateId="echo", workersMax=4)
        emulator.call(emulator.engine.add_endpoint, config)
    try:
        yield made[0], made[1]
    finally:
        for endpoint in made:
            emulator.set_faults(endpoint)
            emulator.call(emulator.engine.delete_endpoint, endpoint)


def test_a_workers_metrics_show_the_fleet(
    make_bridge: MakeBridge, emulator: EmulatorHandle, endpoints: tuple[str, str]
) -> None:
    slow, dead = endpoints
    port = free_port()
    bridge = make_bridge(
        metrics_port=port, breaker_threshold=2, breaker_open_s=300,
        routes={"capped": {"endpoint_id": slow, "max_in_flight": 1},
                "dead": {"endpoint_id": dead}},
    )  # fmt: skip
    settings = bridge.settings

    def value(name: str, **labels: str) -> float | None:
        return scrape(port).get((name, tuple(sorted(labels.items()))))

    assert value("bridge_redis_up") == 1
    assert value("bridge_fleet_workers") == 1  # this worker's lease (its own key prefix)
    assert value("bridge_fleet_leases_expired") == 0
    assert value("bridge_fleet_celery_queue_length", queue=settings.default_queue) == 0
    served = value("bridge_fleet_route_served_age_seconds", route="capped")
    assert served is not None
    assert served < settings.lease_ttl_s

    # Two long jobs on a route capped at one: one at the endpoint, one waiting.
    held = [bridge.producer.send("capped", {"sleep_ms": 60_000, "k": k}) for k in range(2)]
    wait_until(lambda: value("bridge_fleet_waiting", route="capped") == 1, timeout=30)
    assert value("bridge_fleet_in_flight", route="capped") == 2
    oldest = value("bridge_fleet_oldest_waiting_seconds", route="capped")
    assert oldest is not None
    assert oldest > 0
    assert value("bridge_fleet_waiting", route="echo") == 0

    # A failing endpoint opens its route's breaker, as every worker sees it.
    emulator.set_faults(dead, error_rate=1.0)
    bridge.producer.send("dead", {"k": 1})
    bridge.producer.send("dead", {"k": 2})
    wait_until(lambda: value("bridge_fleet_breaker_state", route="dead", endpoint=dead) == 2,
               timeout=60)  # fmt: skip
    assert value("bridge_fleet_breaker_state", route="capped", endpoint=slow) == 0

    # A message that is not JSON is dead-lettered: the DLQ's length and its count.
    bridge.redis.xadd(settings.requests_stream, {"payload": "{not json"})
    wait_until(lambda: value("bridge_fleet_dead_letters") == 1, timeout=30)
    assert value("bridge_fleet_dead_letters_added_total") == 1
    assert value("bridge_dead_letters_total", reason="invalid_json") == 1  # the per-process one
    assert value("bridge_fleet_stream_added_total") == 5

    for request_id, _ in held:  # end the held jobs now
        cancel = json.dumps({"type": "cancel", "id": request_id})
        bridge.redis.xadd(settings.requests_stream, {"payload": cancel})
    assert [bridge.result(reply_to)["status"] for _, reply_to in held] == ["CANCELLED"] * 2
    wait_until(lambda: value("bridge_fleet_in_flight", route="capped") == 0, timeout=30)
    assert value("bridge_fleet_oldest_waiting_seconds", route="capped") == 0


def test_requests_of_a_worker_whose_lease_expired_are_adopted_and_counted(
    make_bridge: MakeBridge,
) -> None:
    """A request recorded by a worker that died (its lease gone, never renewed again) is
    taken over by the live one: bridge_requests_adopted_total counts it."""
    port = free_port()
    bridge = make_bridge(metrics_port=port)
    keys = keys_for(bridge.settings)
    reply_to = keys.reply(f"orphan-{uuid.uuid4().hex[:8]}")
    request = Request(f"orphan-{uuid.uuid4().hex[:8]}", "echo", {"orphan": True}, "poll",
                      reply_to=reply_to, accepted_at=time.time() - 60)  # fmt: skip
    ghost = "ghost-host:4242"
    pipe = bridge.redis.pipeline(transaction=True)
    pipe.hset(keys.request(request.id), mapping={
        "state": "accepted", "route": "echo", "request": request_json(request),
        "created": f"{request.accepted_at:.3f}", "owner": ghost, "submissions": 0,
        "reply_to": reply_to, "token": "",
    })  # fmt: skip
    pipe.sadd(keys.inflight("echo"), request.id)
    pipe.zadd(keys.owners, {ghost: int((time.time() - 60) * 1000)})  # its last renewal
    pipe.execute()

    assert bridge.result(reply_to)["output"] == {"orphan": True}
    adopted = scrape(port).get(("bridge_requests_adopted_total", ()))
    assert adopted == 1
    # the dead worker is forgotten once nothing of its is left to adopt
    wait_until(lambda: scrape(port).get(("bridge_fleet_leases_expired", ())) == 0, timeout=30)
