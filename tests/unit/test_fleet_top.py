"""``bridge top`` on fakeredis: the snapshot reads what workers, doors and beat wrote
(routes, waiting and running requests, the tally, breakers, health, leases, the DLQ),
and a frame rendered on rich's recording console shows it. Clocks are injected."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import fakeredis
import pytest
import redis.exceptions
from rich.console import Console

from bridge import top
from bridge.core.keys import TALLY_BUCKET_S, TALLY_TTL_S, Keys, keys_for
from bridge.core.tally import Tally, Window, bucket_upper_s, latency_bucket, window_keys
from bridge.fleet import Fleet, Snapshot
from bridge.settings import BridgeSettings, RouteConfig

NOW = 1_700_000_005.0  # 5 s into a tally bucket


def settings() -> BridgeSettings:
    return BridgeSettings(
        key_prefix="t",
        requests_stream="t:requests",
        dlq_stream="t:dlq",
        default_queue="t-q",
        routes={
            "sdxl": RouteConfig(endpoint_id="ep-sdxl", queue="t-q"),
            "llm": RouteConfig(endpoint_id="ep-llm", queue="t-q"),
        },
    )


def record(tally: Tally, route: str, status: str, latency_s: float) -> None:
    async def counted() -> None:
        tally.record(route, status, latency_s)
        await tally.flush()

    asyncio.run(counted())


@pytest.fixture
def fleet() -> Any:
    server = fakeredis.FakeServer()
    sync = fakeredis.FakeRedis(server=server)
    cfg = settings()
    k = keys_for(cfg)
    # two live workers, one whose lease expired, one that stopped (score 0)
    for name, renewed_ms, lease_ms in (
        ("w1@host:1", NOW * 1000 - 2000, 13_000),
        ("w2@host:2", NOW * 1000 - 500, 14_500),
        ("w3@host:3", NOW * 1000 - 40_000, None),
    ):
        sync.zadd(k.owners, {name: renewed_ms})
        if lease_ms:
            sync.set(k.owner(name), "1", px=lease_ms)
    sync.zadd(k.owners, {"w4@host:4": 0})
    # sdxl and extra served now; llm last served 100 s ago; gone long ago, nothing left
    sync.hset(k.serving, mapping={"sdxl": NOW - 1, "extra": NOW - 3, "llm": NOW - 100,
                                  "gone": NOW - 3600})  # fmt: skip
    # requests: sdxl 2 waiting + 3 at the endpoint; llm 1 at the endpoint; extra 1 waiting
    requests = [
        ("sdxl", "a1", "accepted", "w1@host:1"),
        ("sdxl", "a2", "submitting", "w1@host:1"),
        ("sdxl", "s1", "submitted", "w1@host:1"),
        ("sdxl", "s2", "submitted", "w2@host:2"),
        ("sdxl", "s3", "submitted", "w3@host:3"),  # being adopted: its owner is gone
        ("sdxl", "f1", "final", "w2@host:2"),  # finished since: not counted
        ("llm", "l1", "submitted", "w2@host:2"),
        ("extra", "x1", "accepted", "w2@host:2"),
    ]
    for route, request_id, state, owner in requests:
        sync.sadd(k.inflight(route), request_id)
        sync.hset(k.request(request_id), mapping={"state": state, "owner": owner})
    sync.sadd(k.inflight("sdxl"), "vanished")  # its record expired
    sync.sadd(k.inflight("sdxl"), "odd")
    sync.set(k.request("odd"), "not a hash")  # someone else's key: skipped, no error
    sync.xadd(k.route_stream("sdxl"), {"payload": "{}"})
    # the tally: 40 done and 2 failed in the last minute, one done too long ago to count
    writer = Tally(fakeredis.FakeAsyncRedis(server=server), k, clock=lambda: NOW)
    for i in range(40):
        record(writer, "sdxl", "COMPLETED", 0.050 if i < 39 else 2.0)
    record(writer, "sdxl", "FAILED", 0.3)
    record(writer, "sdxl", "TIMED_OUT", 0.3)
    record(writer, "sdxl", "CANCELLED", 0.2)
    old = Tally(fakeredis.FakeAsyncRedis(server=server), k, clock=lambda: NOW - 70)
    record(old, "llm", "COMPLETED", 0.1)
    # a breaker open for 5 s of its 30; one health snapshot
    sync.hset(k.breaker("ep-llm"), mapping={"state": "open", "failures": 12, "opened": NOW - 5})
    snap = {"route": "sdxl", "endpoint_id": "ep-sdxl", "at": NOW - 4, "ok": True, "warnings": [],
            "health": {"jobs": {"inQueue": 7, "inProgress": 3},
                       "workers": {"idle": 1, "running": 2}}}  # fmt: skip
    sync.set(k.health("sdxl"), json.dumps(snap))
    extra = {"route": "extra", "endpoint_id": "ep-extra", "at": NOW - 20, "ok": False,
             "warnings": ["[bold]unreachable[/bold]: 503"]}  # fmt: skip
    sync.set(k.health("extra"), json.dumps(extra))
    # the JSON door: 3 entries, 1 read and not acknowledged; a Celery queue; the DLQ
    for _ in range(3):
        sync.xadd(k.requests_stream, {"payload": "{}"})
    sync.xgroup_create(k.requests_stream, cfg.consumer_group, id="0")
    sync.xreadgroup(cfg.consumer_group, "c1", {k.requests_stream: ">"}, count=1)
    sync.rpush("t-q", "task1", "task2")
    for _ in range(4):
        sync.xadd(k.dlq_stream, {"reason": "x"})
    return Fleet(cfg, sync, clock=lambda: NOW)


def test_snapshot_counts_per_route(fleet: Fleet) -> None:
    snap = fleet.snapshot()
    routes = {r.name: r for r in snap.routes}
    assert sorted(routes) == ["extra", "llm", "sdxl"]  # the config and what live workers serve
    sdxl, llm, extra = routes["sdxl"], routes["llm"], routes["extra"]
    assert (sdxl.waiting, sdxl.handed_over, sdxl.at_endpoint) == (2, 1, 3)
    assert (llm.waiting, llm.at_endpoint) == (0, 1)
    assert (extra.waiting, extra.configured, extra.endpoint_id) == (1, False, "ep-extra")
    assert (sdxl.serving_age_s, sdxl.served) == (1, True)
    assert (llm.serving_age_s, llm.served) == (100, False)  # past lease_ttl_s: no live worker
    assert extra.served
    assert (sdxl.window.done, sdxl.window.failed) == (40, 2)  # CANCELLED is neither
    assert sdxl.done_per_min == pytest.approx(40 * 60 / 55)  # a 55 s window, 5 s into a bucket
    assert llm.window.done == 0  # ended 70 s ago
    assert (sdxl.breaker, llm.breaker) == ("closed", "open")
    assert sdxl.health is not None
    assert sdxl.health["health"]["jobs"]["inQueue"] == 7


def test_snapshot_of_workers_door_and_dead_letters(fleet: Fleet) -> None:
    snap = fleet.snapshot()
    workers = {w.name: w for w in snap.workers}
    assert [w.name for w in snap.workers][:2] == ["w1@host:1", "w2@host:2"]  # alive first
    assert {n: w.state for n, w in workers.items()} == {
        "w1@host:1": "alive", "w2@host:2": "alive",
        "w3@host:3": "lease lost", "w4@host:4": "stopped",
    }  # fmt: skip
    assert {n: w.in_flight for n, w in workers.items()} == {
        "w1@host:1": 3, "w2@host:2": 3, "w3@host:3": 1, "w4@host:4": 0,
    }  # fmt: skip
    assert workers["w1@host:1"].renewed_age_s == pytest.approx(2.0)
    assert 0 < (workers["w1@host:1"].lease_left_s or 0) <= 13
    assert snap.unowned == 0
    assert (snap.door.length, snap.door.pending, snap.door.consumers) == (3, 1, 1)
    assert snap.celery_queues == {"t-q": 2}
    assert snap.dlq_length == 4


def render_text(renderable: Any, width: int = 160) -> str:
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def frame(snapshot: Snapshot, width: int = 160) -> str:
    return render_text(top.render(snapshot), width)


def row(text: str, first: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [first])


def test_a_frame_shows_routes_workers_and_the_queues(fleet: Fleet) -> None:
    text = frame(fleet.snapshot())
    # route endpoint wait run done/m fail/m p50 p99 breaker health...
    assert row(text, "sdxl")[:9] == ["sdxl", "ep-sdxl", "2", "+1", "3", "44", "2.2", "54ms", "2.0s"]
    assert row(text, "sdxl")[9:] == ["closed", "4s", "q7", "r3", "w1/2"]
    assert row(text, "llm!")[:8] == ["llm!", "ep-llm", "0", "1", "0", "0", "-", "-"]
    assert "open" in row(text, "llm!")
    extra = row(text, "extra?")  # not in this config; a live worker serves it
    assert extra[:2] == ["extra?", "ep-extra"]
    assert "[bold]unreachable[/bold]: 503" in text  # endpoint text is never markup
    assert row(text, "w1@host:1")[1:] == ["alive", "2s", "ago", "13s", "3"]
    assert row(text, "w3@host:3")[1:3] == ["lease", "lost"]
    assert row(text, "w4@host:4")[1:] == ["stopped", "-", "-", "0"]
    assert "3 in stream (1 being handled, 1 consumer(s))" in text
    assert "Celery queues: t-q 2" in text
    assert "DLQ: 4" in text


def test_a_frame_follows_workers_coming_and_going(fleet: Fleet) -> None:
    before = frame(fleet.snapshot())
    assert "w9@host:9" not in before
    k = fleet.keys
    fleet.redis.zadd(k.owners, {"w9@host:9": NOW * 1000})
    fleet.redis.set(k.owner("w9@host:9"), "1", px=15_000)
    fleet.redis.delete(k.owner("w1@host:1"))  # its lease ran out
    after = frame(fleet.snapshot())
    assert row(after, "w9@host:9")[1] == "alive"
    assert row(after, "w1@host:1")[1:3] == ["lease", "lost"]


def test_an_empty_fleet_renders(fleet: Fleet) -> None:
    fleet.redis.flushall()
    text = frame(fleet.snapshot())
    assert "no worker has held a lease" in text
    assert "0 in stream (no consumer group, 0 consumer(s))" in text
    assert row(text, "sdxl!")[2:8] == ["0", "0", "0", "0", "-", "-"]


def test_a_redis_failure_mid_view_is_shown_and_retried(fleet: Fleet) -> None:
    import redis

    calls = {"n": 0}
    real = fleet.snapshot
    slept: list[float] = []

    def flaky() -> Snapshot:
        calls["n"] += 1
        if calls["n"] == 2:
            raise redis.ConnectionError("Connection refused")
        return real()

    fleet.snapshot = flaky  # type: ignore[method-assign]
    shown = top.frames(fleet, interval=1.0, sleep=slept.append)
    texts = [render_text(next(shown)) for _ in range(3)]
    assert "cannot read the fleet" not in texts[0]
    assert "w1@host:1" in texts[0]
    assert "cannot read the fleet: Connection refused (retrying)" in texts[1]
    assert "w1@host:1" in texts[1]  # the last good frame stays under the warning
    assert "cannot read the fleet" not in texts[2]
    assert slept == [1.0, 1.0]


def test_the_first_snapshot_failing_is_an_error(fleet: Fleet) -> None:
    import redis

    def down() -> Snapshot:
        raise redis.ConnectionError("Connection refused")

    fleet.snapshot = down  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        next(top.frames(fleet, sleep=lambda _: None))


def test_tally_histogram_and_percentiles() -> None:
    assert latency_bucket(0.0005) == 0
    for seconds in (0.003, 0.05, 1.0, 37.0, 600.0):
        upper = bucket_upper_s(latency_bucket(seconds))
        assert seconds <= upper < seconds * 1.19 + 1e-9
    window = Window.read(
        [{b"s:COMPLETED": b"99", b"l:" + str(latency_bucket(0.05)).encode(): b"99"},
         {b"s:FAILED": b"1", b"l:" + str(latency_bucket(9.0)).encode(): b"1"}],
        now=NOW,
    )  # fmt: skip
    assert window.percentile(0.5) == bucket_upper_s(latency_bucket(0.05))
    assert window.percentile(0.99) == bucket_upper_s(latency_bucket(0.05))
    assert window.percentile(1.0) == bucket_upper_s(latency_bucket(9.0))
    assert Window.read([], NOW).percentile(0.5) is None


def test_tally_writes_one_bucket_with_a_ttl() -> None:
    client = fakeredis.FakeAsyncRedis()
    keys = Keys("p")
    tally = Tally(client, keys, clock=lambda: NOW)
    record(tally, "r", "COMPLETED", 0.05)
    bucket = int(NOW // TALLY_BUCKET_S)

    async def look() -> tuple[dict[bytes, bytes], int, list[bytes]]:
        key = keys.tally("r", bucket)
        return await client.hgetall(key), await client.ttl(key), await client.keys("*")

    fields, ttl, every = asyncio.run(look())
    assert fields == {b"s:COMPLETED": b"1", f"l:{latency_bucket(0.05)}".encode(): b"1"}
    assert 0 < ttl <= TALLY_TTL_S
    assert every == [keys.tally("r", bucket).encode()]
    assert window_keys(keys, "r", NOW)[0] == keys.tally("r", bucket)


def test_off_a_terminal_every_frame_is_printed_until_ctrl_c(fleet: Fleet) -> None:
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt  # Ctrl-C while waiting for the next frame

    console = Console(record=True, width=160, color_system=None, file=io.StringIO())
    top.run(fleet, console, interval=2.0, sleep=sleep)  # returns: Ctrl-C is no error
    assert naps == [2.0, 2.0, 2.0]
    assert console.export_text().count("bridge top") == 3


def test_a_process_counts_in_memory_and_adds_once_a_flush() -> None:
    """Requests of one second are added together: one HINCRBY per field that moved."""
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server)
    keys = Keys("p")
    key = keys.tally("r", int(NOW // TALLY_BUCKET_S))

    async def scenario() -> list[dict[bytes, bytes]]:
        tally = Tally(client, keys, clock=lambda: NOW, flush_s=3600)
        for _ in range(5):
            tally.record("r", "COMPLETED", 0.05)
        tally.record("r", "FAILED", 0.05)
        seen = [await client.hgetall(key)]  # nothing yet: counted in memory
        await tally.flush()
        seen.append(await client.hgetall(key))
        await tally.flush()  # nothing new: nothing added
        seen.append(await client.hgetall(key))
        return seen

    before, after, again = asyncio.run(scenario())
    assert before == {}
    expected = {b"s:COMPLETED": b"5", b"s:FAILED": b"1", f"l:{latency_bucket(0.05)}".encode(): b"6"}
    assert after == expected
    assert again == expected


def test_the_flush_comes_by_itself() -> None:
    client = fakeredis.FakeAsyncRedis()
    keys = Keys("p")

    async def scenario() -> dict[bytes, bytes]:
        tally = Tally(client, keys, clock=lambda: NOW, flush_s=0)
        tally.record("r", "COMPLETED", 0.05)
        for _ in range(100):  # loop turns: the timer's, then its flush's
            if tally._flushing is None and not tally._tasks:
                break
            await asyncio.sleep(0)
        return await client.hgetall(keys.tally("r", int(NOW // TALLY_BUCKET_S)))

    assert asyncio.run(scenario())[b"s:COMPLETED"] == b"1"


@pytest.mark.parametrize("away_s", [0, TALLY_TTL_S + TALLY_BUCKET_S])
def test_counts_wait_while_redis_is_away(away_s: float) -> None:
    """Counts that could not be added are added with the next flush (a stopping
    process's last), unless Redis was away so long that their hash would no longer be
    read."""
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server)
    keys = Keys("p")
    now = [NOW]

    async def scenario() -> dict[bytes, bytes]:
        tally = Tally(client, keys, clock=lambda: now[0], flush_s=3600)
        tally.record("r", "COMPLETED", 0.05)
        server.connected = False
        now[0] += away_s
        with pytest.raises(redis.exceptions.ConnectionError):
            await tally.flush()
        server.connected = True
        await tally.aclose()
        return await client.hgetall(keys.tally("r", int(NOW // TALLY_BUCKET_S)))

    assert asyncio.run(scenario()).get(b"s:COMPLETED") == (b"1" if away_s == 0 else None)
