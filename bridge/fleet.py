"""A read-only snapshot of the fleet, from Redis alone: what ``bridge top`` shows.

Per route: requests waiting (accepted, not yet at the endpoint, plus those handed over
between workers), in flight at the endpoint, done and failed per minute and p50/p99
latency (:mod:`bridge.core.tally`), the endpoint's breaker, the last health snapshot.
Per worker: its lease (last renewal, time left) and the in-flight requests it follows.
The JSON door's stream, the Celery queues on the same Redis, and the dead letters.

Nothing here writes. A snapshot costs four pipelined round trips; one of them reads
the state and owner of every request in flight (one HMGET each), so its cost grows with
the requests in flight: with 10,000, about 25 ms of Redis time and 0.2 s of the CLI's
own (``bench/fleet_view.py``, 2-core machine); pipelined, so other clients interleave.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from bridge.core.breaker import BreakerState
from bridge.core.keys import keys_for
from bridge.core.scripts import text
from bridge.core.tally import WINDOW_BUCKETS, Window, window_keys
from bridge.settings import BridgeSettings

WAITING_STATES = frozenset({"accepted", "submitting"})
AT_ENDPOINT = "submitted"


@dataclass(frozen=True)
class RouteView:
    name: str
    endpoint_id: str | None
    configured: bool
    serving_age_s: float | None
    """Since a worker last said it serves the route (None: none ever did)."""
    served: bool
    """A live worker serves it: one said so within ``lease_ttl_s`` (the JSON door's
    rule for handing a request over)."""
    waiting: int
    handed_over: int
    at_endpoint: int
    window: Window
    breaker: str
    health: dict[str, Any] | None

    @property
    def done_per_min(self) -> float:
        return self.window.per_minute(self.window.done)

    @property
    def failed_per_min(self) -> float:
        return self.window.per_minute(self.window.failed)


@dataclass(frozen=True)
class WorkerView:
    name: str
    renewed_age_s: float | None
    """Since the worker last renewed its lease (None: it stopped and gave it up)."""
    lease_left_s: float | None
    """Until its lease expires (None: expired, or given up)."""
    in_flight: int

    @property
    def state(self) -> str:
        if self.lease_left_s is not None:
            return "alive"
        return "stopped" if self.renewed_age_s is None else "lease lost"


@dataclass(frozen=True)
class DoorView:
    stream: str
    length: int
    pending: int | None
    """Read by a worker, not yet acknowledged (None: no consumer group yet)."""
    consumers: int


@dataclass(frozen=True)
class Snapshot:
    at: float
    routes: list[RouteView]
    workers: list[WorkerView]
    door: DoorView
    celery_queues: dict[str, int] = field(default_factory=dict)
    """Queue → tasks waiting, when the broker is this Redis (empty otherwise)."""
    dlq_length: int = 0
    unowned: int = 0
    """In-flight requests whose owner is no worker listed (being adopted)."""


@dataclass(frozen=True)
class _Read:
    """What the second round trip read for one route."""

    members: list[str]
    handed_over: int
    health: dict[str, Any] | None
    window: Window


class Fleet:
    """Takes snapshots of one deployment (its settings name the keys and routes)."""

    def __init__(
        self,
        settings: BridgeSettings,
        client: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.redis = client or redis.Redis.from_url(settings.redis_url)
        self.keys = keys_for(settings)
        self._clock = clock

    def close(self) -> None:
        self.redis.close()

    def snapshot(self) -> Snapshot:
        now = self._clock()
        k, settings = self.keys, self.settings
        # 1. who is there: routes live workers serve, workers with leases
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(k.serving)
        pipe.zrange(k.owners, 0, -1, withscores=True)
        serving_raw, owners_raw = pipe.execute()
        serving = {text(r): float(t) for r, t in serving_raw.items()}
        names = sorted(set(settings.routes) | set(serving))
        owners = [(text(name), float(score)) for name, score in owners_raw]
        queues = self._celery_queues()

        # 2. per route and per worker, everything that needs no lookup
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.smembers(k.inflight(name))
            pipe.xlen(k.route_stream(name))
            pipe.get(k.health(name))
            for key in window_keys(k, name, now):
                pipe.hgetall(key)
        for owner, _ in owners:
            pipe.pttl(k.owner(owner))
        for queue in queues:
            pipe.llen(queue)
        pipe.xlen(k.dlq_stream)
        pipe.xlen(k.requests_stream)
        pipe.xinfo_groups(k.requests_stream)
        results = iter(pipe.execute(raise_on_error=False))
        per_route: dict[str, _Read] = {}
        for name in names:
            per_route[name] = _Read(
                members=[text(m) for m in _ok(next(results), set())],
                handed_over=int(_ok(next(results), 0)),
                health=_json(_ok(next(results), None)),
                window=Window.read([_ok(next(results), {}) for _ in range(WINDOW_BUCKETS)], now),
            )
        # A route only workers named, none of them lately, with nothing in flight: gone.
        names = [
            n for n in names
            if n in settings.routes or self._served(serving, n, now) or per_route[n].members
        ]  # fmt: skip
        ttls = {owner: int(_ok(next(results), -2)) for owner, _ in owners}
        celery = {queue: int(_ok(next(results), 0)) for queue in queues}
        dlq_length = int(_ok(next(results), 0))
        door = self._door(int(_ok(next(results), 0)), _ok(next(results), []))

        # 3. each in-flight request's state and owner; each endpoint's breaker
        endpoints = {
            name: self._endpoint_id(name, per_route[name].health) for name in names
        }  # fmt: skip
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            for request_id in per_route[name].members:
                pipe.hmget(k.request(request_id), ["state", "owner"])
        breaker_ids = sorted({e for e in endpoints.values() if e})
        for endpoint_id in breaker_ids:
            pipe.hgetall(k.breaker(endpoint_id))
        looked = iter(pipe.execute(raise_on_error=False))
        states: dict[str, Counter[str]] = {}
        owned: Counter[str] = Counter()
        for name in names:
            states[name] = Counter()
            for _ in per_route[name].members:
                fields = _ok(next(looked), [None, None])
                state, holder = (text(v) if v is not None else None for v in fields)
                if state is None or state == "final":
                    continue  # gone or finished since SMEMBERS
                states[name][state] += 1
                owned[holder or ""] += 1
        breakers: dict[str | None, str] = {
            e: BreakerState.read(
                _ok(next(looked), {}), open_s=settings.breaker_open_s, now=now
            ).state
            for e in breaker_ids
        }

        routes = [
            RouteView(
                name=name,
                endpoint_id=endpoints[name],
                configured=name in settings.routes,
                serving_age_s=now - serving[name] if name in serving else None,
                served=self._served(serving, name, now),
                waiting=sum(states[name][s] for s in WAITING_STATES),
                handed_over=per_route[name].handed_over,
                at_endpoint=states[name][AT_ENDPOINT],
                window=per_route[name].window,
                breaker=breakers.get(endpoints[name], "-"),
                health=per_route[name].health,
            )
            for name in names
        ]
        workers = [
            WorkerView(
                name=owner,
                renewed_age_s=now - score / 1000 if score > 0 else None,
                lease_left_s=ttls[owner] / 1000 if ttls[owner] > 0 else None,
                in_flight=owned.pop(owner, 0),
            )
            for owner, score in owners
        ]
        workers.sort(key=lambda w: (w.state != "alive", w.name))
        return Snapshot(
            at=now,
            routes=routes,
            workers=workers,
            door=door,
            celery_queues=celery,
            dlq_length=dlq_length,
            unowned=sum(owned.values()),
        )

    def _served(self, serving: dict[str, float], route: str, now: float) -> bool:
        return route in serving and now - serving[route] < self.settings.lease_ttl_s

    def _endpoint_id(self, route: str, health: dict[str, Any] | None) -> str | None:
        config = self.settings.routes.get(route)
        if config is not None:
            return config.endpoint_id
        found = (health or {}).get("endpoint_id")  # a route only a live worker knows
        return str(found) if found else None

    def _celery_queues(self) -> list[str]:
        """The routes' Celery queues, when the broker is this very Redis."""
        if self.settings.broker != self.settings.redis_url:
            return []
        routes = self.settings.routes.values()
        return sorted({self.settings.default_queue, *(r.queue for r in routes)})

    def _door(self, length: int, groups: Any) -> DoorView:
        stream = self.keys.requests_stream
        for group in groups if isinstance(groups, list) else []:
            if text(group.get("name")) == self.settings.consumer_group:
                return DoorView(stream, length, int(group["pending"]), int(group["consumers"]))
        return DoorView(stream, length, None, 0)


def _ok(value: Any, default: Any) -> Any:
    """A pipelined reply, or ``default`` for a command Redis refused on this key (XINFO
    of a stream that does not exist yet, a key of another type): the view goes on."""
    if isinstance(value, redis.ResponseError):
        return default
    if isinstance(value, Exception):
        raise value
    return default if value is None else value


def _json(raw: Any) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
