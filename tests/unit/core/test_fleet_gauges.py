"""The fleet collector (bridge.core.fleet_metrics) on fakeredis: the state is written by
the bridge's own writers (ledger claims, leases, breakers, the DLQ stream), then read
back through a Prometheus registry as a scrape would. The clock is injected."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import fakeredis
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.core.breaker import Breakers
from bridge.core.fleet_metrics import FAMILIES, FleetCollector, exported_names, register
from bridge.core.keys import keys_for
from bridge.core.leases import Leases
from bridge.core.ledger import Ledger
from bridge.core.model import Request
from bridge.settings import BridgeSettings

NOW = 1_800_000_000.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def settings() -> BridgeSettings:
    prefix = f"ut-{uuid.uuid4().hex[:8]}"
    return BridgeSettings.load(
        key_prefix=prefix, requests_stream=f"{prefix}:requests", dlq_stream=f"{prefix}:dlq",
        breaker_threshold=2, breaker_open_s=30,
    )  # fmt: skip


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
async def aredis(server: fakeredis.FakeServer) -> AsyncIterator[AsyncRedis]:
    client = fakeredis.FakeAsyncRedis(server=server)
    yield client
    await client.aclose()


@pytest.fixture
def sredis(server: fakeredis.FakeServer) -> Redis:
    return fakeredis.FakeRedis(server=server)


def scrape(collector: FleetCollector) -> Samples:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_an_idle_fleet(sredis: Redis, settings: BridgeSettings) -> None:
    samples = scrape(FleetCollector(sredis, settings, clock=lambda: NOW))
    assert value(samples, "bridge_redis_up") == 1
    assert value(samples, "bridge_fleet_workers") == 0
    assert value(samples, "bridge_fleet_dead_letters") == 0
    for route in settings.routes:
        assert value(samples, "bridge_fleet_in_flight", route=route) == 0
        assert value(samples, "bridge_fleet_oldest_waiting_seconds", route=route) == 0
    stream = settings.requests_stream
    assert value(samples, "bridge_fleet_stream_entries", stream=stream) == 0
    assert value(samples, "bridge_fleet_stream_oldest_seconds", stream=stream) == 0
    # every name exported is declared (the alert and dashboard checks rely on it)
    assert {name for name, _ in samples} <= exported_names()


async def test_waiting_and_in_flight_requests_with_their_ages(
    aredis: AsyncRedis, sredis: Redis, settings: BridgeSettings
) -> None:
    ledger = Ledger(aredis, keys_for(settings))
    waiting = Request("old-waiting", "echo", {}, "poll", accepted_at=NOW - 600)
    fresh = Request("fresh-waiting", "echo", {}, "poll", accepted_at=NOW - 5)
    submitted = Request("submitted", "echo", {}, "poll", accepted_at=NOW - 900)
    for request in (waiting, fresh, submitted):
        await ledger.claim(request, "w1")
    await ledger.mark_submitting(submitted.id, "w1")
    await ledger.mark_submitted(submitted.id, "job-1")
    await ledger.claim(Request("s1", "stream", {}, "stream", accepted_at=NOW - 30), "w1")

    samples = scrape(FleetCollector(sredis, settings, clock=lambda: NOW))
    assert value(samples, "bridge_fleet_in_flight", route="echo") == 3
    assert value(samples, "bridge_fleet_waiting", route="echo") == 2
    assert value(samples, "bridge_fleet_oldest_waiting_seconds", route="echo") == pytest.approx(600)
    assert value(samples, "bridge_fleet_oldest_in_flight_seconds", route="echo") == pytest.approx(
        900
    )
    assert value(samples, "bridge_fleet_waiting", route="stream") == 1
    assert value(samples, "bridge_fleet_waiting", route="fail") == 0

    # beyond max_walk, a sample is read and the count scaled up
    sampled = scrape(FleetCollector(sredis, settings, clock=lambda: NOW, max_walk=2))
    assert value(sampled, "bridge_fleet_in_flight", route="echo") == 3
    assert value(sampled, "bridge_fleet_waiting", route="echo") in (2, 3)


async def test_live_and_lost_leases(
    aredis: AsyncRedis, sredis: Redis, settings: BridgeSettings
) -> None:
    keys = keys_for(settings)
    for owner in ("a:1", "b:2", "c:3"):
        await Leases(aredis, keys, owner, ttl_s=15, routes=["echo"]).renew()
    await aredis.delete(keys.owner("b:2"))  # its lease expired: b died without a word
    await Leases(aredis, keys, "c:3", ttl_s=15).drop()  # c stopped gracefully
    served_at = float(await aredis.hget(keys.serving, "echo") or 0)

    samples = scrape(FleetCollector(sredis, settings, clock=lambda: served_at + 7))
    assert value(samples, "bridge_fleet_workers") == 1
    assert value(samples, "bridge_fleet_leases_expired") == 1
    assert value(samples, "bridge_fleet_route_served_age_seconds", route="echo") == pytest.approx(7)


async def test_breakers_as_the_fleet_shares_them(
    aredis: AsyncRedis, sredis: Redis, settings: BridgeSettings
) -> None:
    breakers = Breakers(aredis, keys_for(settings), threshold=2, open_s=30, clock=lambda: NOW)
    endpoint = settings.routes["echo"].endpoint_id
    for _ in range(2):
        await breakers.record(endpoint, False)

    def state(at: float) -> float:
        samples = scrape(FleetCollector(sredis, settings, clock=lambda: at))
        return value(samples, "bridge_fleet_breaker_state", route="echo", endpoint=endpoint)

    assert state(NOW + 1) == 2  # open
    assert state(NOW + 31) == 1  # half-open: the next request is the probe
    samples = scrape(FleetCollector(sredis, settings, clock=lambda: NOW))
    fail = settings.routes["fail"].endpoint_id
    assert value(samples, "bridge_fleet_breaker_state", route="fail", endpoint=fail) == 0


async def test_streams_dead_letters_and_health(
    aredis: AsyncRedis, sredis: Redis, settings: BridgeSettings
) -> None:
    keys = keys_for(settings)
    oldest_ms = int((NOW - 120) * 1000)
    await aredis.xadd(keys.requests_stream, {"payload": "{}"}, id=f"{oldest_ms}-0")
    await aredis.xadd(keys.requests_stream, {"payload": "{}"}, id=f"{oldest_ms + 1000}-0")
    await aredis.xadd(keys.route_stream("echo"), {"payload": "{}"}, id=f"{oldest_ms}-0")
    for _ in range(3):
        await aredis.xadd(keys.dlq_stream, {"reason": "invalid_json"})
    entry = await aredis.xadd(keys.dlq_stream, {"reason": "invalid_json"})
    await aredis.xdel(keys.dlq_stream, entry)  # `bridge dlq` removed one: still counted added
    health = {"workers": {"idle": 2, "running": 1}, "jobs": {"inQueue": 4}}
    snapshot = {"route": "echo", "at": NOW - 20, "ok": True, "health": health}
    await aredis.set(keys.health("echo"), json.dumps(snapshot))
    await aredis.set(keys.health("fail"), json.dumps({"at": NOW - 5, "ok": False}))

    samples = scrape(FleetCollector(sredis, settings, clock=lambda: NOW))
    stream = keys.requests_stream
    assert value(samples, "bridge_fleet_stream_entries", stream=stream) == 2
    assert value(samples, "bridge_fleet_stream_oldest_seconds", stream=stream) == pytest.approx(120)
    handoff = keys.route_stream("echo")
    assert value(samples, "bridge_fleet_stream_entries", stream=handoff) == 1
    assert value(samples, "bridge_fleet_stream_added_total") == 2
    assert value(samples, "bridge_fleet_dead_letters") == 3
    assert value(samples, "bridge_fleet_dead_letters_added_total") == 4
    assert value(samples, "bridge_fleet_health_age_seconds", route="echo") == pytest.approx(20)
    assert value(samples, "bridge_fleet_endpoint_up", route="echo") == 1
    assert value(samples, "bridge_fleet_endpoint_up", route="fail") == 0
    assert value(samples, "bridge_fleet_endpoint_workers", route="echo", state="idle") == 2
    assert value(samples, "bridge_fleet_endpoint_jobs", route="echo", state="inQueue") == 4


class DownRedis(fakeredis.FakeRedis):
    """A Redis that does not answer (every command fails as on a refused connection)."""

    def execute_command(self, *args: object, **kwargs: object) -> object:
        raise RedisConnectionError("Connection refused")

    def pipeline(self, transaction: bool = True, shard_hint: object = None) -> object:
        raise RedisConnectionError("Connection refused")


def test_redis_down_is_a_metric_not_a_failed_scrape(settings: BridgeSettings) -> None:
    samples = scrape(FleetCollector(DownRedis(), settings, clock=lambda: NOW))
    assert samples == {("bridge_redis_up", ()): 0.0}


class UntouchableRedis(fakeredis.FakeRedis):
    """Fails the test on any command."""

    def execute_command(self, *args: object, **kwargs: object) -> object:
        raise AssertionError(f"Redis was called: {args}")

    def pipeline(self, transaction: bool = True, shard_hint: object = None) -> object:
        raise AssertionError("Redis was called (pipeline)")


def test_registering_reads_nothing(settings: BridgeSettings) -> None:
    collector = FleetCollector(UntouchableRedis(), settings)
    CollectorRegistry(auto_describe=True).register(collector)  # describe() only
    assert {m.name for m in collector.describe()} == set(FAMILIES)


def test_a_large_in_flight_set_is_walked_in_slices_up_to_max_walk(
    sredis: Redis, settings: BridgeSettings
) -> None:
    keys = keys_for(settings)
    pipe = sredis.pipeline(transaction=False)
    for i in range(2500):  # every third one submitted, the others waiting
        state = "submitted" if i % 3 == 0 else "accepted"
        pipe.hset(keys.request(f"r{i}"), mapping={"state": state, "created": NOW - i})
        pipe.sadd(keys.inflight("echo"), f"r{i}")
    pipe.hset(keys.request("done"), mapping={"state": "final", "created": NOW - 9999})
    pipe.sadd(keys.inflight("echo"), "done")  # final, not yet removed by recovery
    pipe.execute()

    full = scrape(FleetCollector(sredis, settings, clock=lambda: NOW))
    assert value(full, "bridge_fleet_in_flight", route="echo") == 2501
    assert value(full, "bridge_fleet_waiting", route="echo") == 1666
    assert value(full, "bridge_fleet_oldest_in_flight_seconds", route="echo") == 2499
    assert value(full, "bridge_fleet_oldest_waiting_seconds", route="echo") == 2498

    part = scrape(FleetCollector(sredis, settings, clock=lambda: NOW, max_walk=1000))
    assert value(part, "bridge_fleet_in_flight", route="echo") == 2501
    assert 1000 < value(part, "bridge_fleet_waiting", route="echo") < 2501  # scaled up


def test_a_redis_url_the_collector_cannot_open_leaves_the_worker_serving(
    settings: BridgeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    odd = settings.model_copy(update={"redis_url": "nosuch://127.0.0.1:6379/0"})
    registry = CollectorRegistry()
    assert register(odd, registry) is None
    assert "fleet metrics not exported" in caplog.text
    assert generate_latest(registry) == b""
    assert isinstance(register(settings, registry), FleetCollector)  # a redis:// URL


def test_the_celery_doors_backlog_when_the_broker_is_the_bridges_redis(
    sredis: Redis, settings: BridgeSettings
) -> None:
    queue = settings.default_queue
    sredis.lpush(queue, "m1", "m2")
    sredis.lpush(queue + "\x06\x166", "m3")  # kombu's priority-6 sub-queue
    samples = scrape(FleetCollector(sredis, settings, clock=lambda: NOW))
    assert value(samples, "bridge_fleet_celery_queue_length", queue=queue) == 3

    elsewhere = settings.model_copy(update={"broker_url": "amqp://guest:guest@rabbit//"})
    samples = scrape(FleetCollector(sredis, elsewhere, clock=lambda: NOW))
    assert not [name for name, _ in samples if name == "bridge_fleet_celery_queue_length"]
