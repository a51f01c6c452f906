"""Fleet-wide Prometheus metrics, read from Redis when ``/metrics`` is scraped.

A worker's own metrics (:mod:`bridge.core.metrics`) count what that process did. What an
operator alerts on is often the fleet's state, which no single process holds: is Redis
up, which workers hold a live lease, how many requests wait and for how long, how long
the dead-letter stream is, which breakers are open. :class:`FleetCollector` reads that
from the bridge's keys (:mod:`bridge.core.keys`) at scrape time, with a handful of
pipelined reads, so every worker that serves metrics also exports the fleet's view:
Prometheus sees the same values from each of them (aggregate with ``max``).

Every metric here is named ``bridge_fleet_*`` (but ``bridge_redis_up``). When Redis
does not answer, only ``bridge_redis_up 0`` is exported.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from redis import Redis
from redis.exceptions import RedisError, ResponseError

from bridge.core.breaker import BreakerState
from bridge.core.keys import Keys, keys_for
from bridge.core.metrics import BREAKER_VALUES
from bridge.core.scripts import NamedScript, text
from bridge.settings import BridgeSettings

log = logging.getLogger("bridge.metrics")

MAX_WALK = 10_000
"""In-flight requests of one route looked at per scrape; beyond it the waiting count is
scaled up from the part read and the oldest ages are those of that part (estimates)."""

# A route's in-flight set, walked in Redis a slice at a time (SSCAN): in Python, 10,000
# HMGETs took ~0.5 s per scrape; in one script, Redis was blocked ~45 ms; a slice of
# 1,000 blocks it ~5 ms. Records not yet final count; "accepted" and "submitting" ones
# have no job at the endpoint yet: they wait. Ages come back as text (Lua numbers would
# be truncated to integers). Keys are built from the prefix, as ADOPT does (one Redis).
AGES = NamedScript(
    """
local reply = redis.call('SSCAN', inflight, cursor, 'COUNT', count)
local waiting, oldest_waiting, oldest = 0, nil, nil
for _, id in ipairs(reply[2]) do
  local f = redis.call('HMGET', prefix .. id, 'state', 'created')
  local state, created = f[1], tonumber(f[2])
  if state and state ~= 'final' and state ~= 'tombstone' then
    if created and (not oldest or created < oldest) then
      oldest = created
    end
    if state == 'accepted' or state == 'submitting' then
      waiting = waiting + 1
      if created and (not oldest_waiting or created < oldest_waiting) then
        oldest_waiting = created
      end
    end
  end
end
return {reply[1], #reply[2], waiting, tostring(oldest_waiting or ''), tostring(oldest or '')}
""",
    keys=("inflight",),
    args=("prefix", "cursor", "count"),
)
_SLICE = 1000
# kombu's Redis transport: the queue itself, then its default priority steps (3, 6, 9).
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def _family(kind: str, name: str, doc: str, labels: Iterable[str] = ()) -> Any:
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, doc, labels=list(labels))


# name: (kind, documentation, labels). The one list of what this collector exports: the
# alert rules and the dashboard are checked against it (tests/unit/test_monitoring_files).
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "bridge_redis_up": ("gauge", "1 when the bridge's Redis answered this scrape", ()),
    "bridge_fleet_workers": ("gauge", "Worker processes holding a live lease", ()),
    "bridge_fleet_leases_expired": (
        "gauge",
        "Worker processes whose lease expired without a goodbye (died or stalled); their "
        "requests are adopted by the others",
        (),
    ),
    "bridge_fleet_in_flight": (
        "gauge", "Requests accepted and not yet final, all workers", ("route",)),
    "bridge_fleet_waiting": (
        "gauge", "Requests accepted with no job at the endpoint yet (not yet submitted)",
        ("route",)),
    "bridge_fleet_oldest_waiting_seconds": (
        "gauge", "Age of the oldest request not yet submitted (0: none)", ("route",)),
    "bridge_fleet_oldest_in_flight_seconds": (
        "gauge", "Age of the oldest request not yet final (0: none)", ("route",)),
    "bridge_fleet_stream_entries": (
        "gauge", "JSON-door entries not yet handled (handled ones are deleted)", ("stream",)),
    "bridge_fleet_stream_oldest_seconds": (
        "gauge", "Age of the oldest JSON-door entry not yet handled (0: none)", ("stream",)),
    "bridge_fleet_stream_added": (
        "counter", "Entries ever added to the JSON door's request stream", ()),
    "bridge_fleet_dead_letters": (
        "gauge", "Entries in the dead-letter stream (capped at 100,000)", ()),
    "bridge_fleet_dead_letters_added": (
        "counter", "Entries ever added to the dead-letter stream", ()),
    "bridge_fleet_celery_queue_length": (
        "gauge", "Celery messages waiting in a queue of the broker, when the broker is the "
        "bridge's Redis (its priority sub-queues included)", ("queue",)),
    "bridge_fleet_breaker_state": (
        "gauge", "Circuit breaker as every worker sees it: 0 closed, 1 half-open, 2 open",
        ("route", "endpoint")),
    "bridge_fleet_route_served_age_seconds": (
        "gauge", "Seconds since a worker last said it serves the route (lease renewal)",
        ("route",)),
    "bridge_fleet_health_age_seconds": (
        "gauge", "Age of the route's last health snapshot", ("route",)),
    "bridge_fleet_endpoint_up": (
        "gauge", "1 when the last health check reached the endpoint", ("route",)),
    "bridge_fleet_endpoint_workers": (
        "gauge", "Endpoint workers by state, from the last health snapshot",
        ("route", "state")),
    "bridge_fleet_endpoint_jobs": (
        "gauge", "Endpoint jobs by state, from the last health snapshot", ("route", "state")),
    "bridge_fleet_collect_seconds": (
        "gauge", "Time this scrape spent reading the fleet's state from Redis", ()),
}  # fmt: skip


def exported_names() -> set[str]:
    """Every sample name this collector can export (counters with ``_total``)."""
    return {n + "_total" if kind == "counter" else n for n, (kind, _, _) in FAMILIES.items()}


class FleetCollector(Collector):
    """Reads the fleet's state from Redis at every :meth:`collect`.

    Args:
        redis: a synchronous client of the bridge's Redis (scrapes run on the metrics
            server's thread, not on the worker's event loop).
        settings: routes (names, endpoints), stream names, lease and breaker timings.
        clock: wall-clock time (tests inject one).
        max_walk: in-flight requests of one route read per scrape (see :data:`MAX_WALK`).
    """

    def __init__(
        self,
        redis: Redis,
        settings: BridgeSettings,
        *,
        clock: Callable[[], float] = time.time,
        max_walk: int = MAX_WALK,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys: Keys = keys_for(settings)
        self.clock = clock
        self.max_walk = max_walk
        self._ages = AGES.bind(redis)

    def describe(self) -> list[Metric]:
        """The families, empty (registration must not read Redis)."""
        return [_family(kind, n, doc, labels) for n, (kind, doc, labels) in FAMILIES.items()]

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        up = _family("gauge", "bridge_redis_up", FAMILIES["bridge_redis_up"][1])
        try:
            families = self._read()
        except (RedisError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families.values()
        took = _family("gauge", "bridge_fleet_collect_seconds",
                       FAMILIES["bridge_fleet_collect_seconds"][1])  # fmt: skip
        took.add_metric([], time.perf_counter() - start)
        yield took

    # -- reading ------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        keys, now = self.keys, self.clock()
        fam = {
            n: _family(kind, n, doc, labels)
            for n, (kind, doc, labels) in FAMILIES.items()
            if n not in ("bridge_redis_up", "bridge_fleet_collect_seconds")
        }
        served = {text(k): float(text(v)) for k, v in self.redis.hgetall(keys.serving).items()}
        routes = sorted(set(self.settings.routes) | set(served))
        streams = [keys.requests_stream, *(keys.route_stream(r) for r in routes)]

        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(keys.owners, 0, -1, withscores=True)
        for route in routes:
            pipe.scard(keys.inflight(route))
            pipe.get(keys.health(route))
        for stream in streams:
            pipe.xlen(stream)
            pipe.xrange(stream, "-", "+", count=1)
        for route in routes:
            config = self.settings.routes.get(route)
            if config is not None:
                pipe.hgetall(keys.breaker(config.endpoint_id))
        replies = iter(pipe.execute())

        owners = [(text(o), score) for o, score in next(replies)]
        sizes, snapshots = {}, {}
        for route in routes:
            sizes[route] = int(next(replies))
            snapshots[route] = next(replies)
        for stream in streams:
            length, first = int(next(replies)), next(replies)
            if length or stream == keys.requests_stream:
                fam["bridge_fleet_stream_entries"].add_metric([stream], length)
                oldest = _entry_age(first, now)
                fam["bridge_fleet_stream_oldest_seconds"].add_metric([stream], oldest)
        for route in routes:
            config = self.settings.routes.get(route)
            if config is not None:
                state = BreakerState.read(next(replies), open_s=self.settings.breaker_open_s,
                                          now=now)  # fmt: skip
                fam["bridge_fleet_breaker_state"].add_metric(
                    [route, config.endpoint_id], BREAKER_VALUES.get(state.state, 0)
                )

        self._workers(fam, owners)
        for route in routes:
            self._route(fam, route, sizes[route], now)
            if route in served:
                fam["bridge_fleet_route_served_age_seconds"].add_metric(
                    [route], max(0.0, now - served[route])
                )
            _health(fam, route, snapshots[route], now)
        self._streams(fam)
        if self.settings.broker == self.settings.redis_url:
            self._celery_queues(fam)
        return fam

    def _celery_queues(self, fam: dict[str, Any]) -> None:
        """The Celery door's backlog: kombu keeps a Redis queue as a list, plus one list
        per priority step (``<queue>\\x06\\x16<n>``) when priorities are used."""
        queues = sorted({self.settings.default_queue,
                         *(r.queue for r in self.settings.routes.values())})  # fmt: skip
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            for suffix in _PRIORITY_SUFFIXES:
                pipe.llen(queue + suffix)
        lengths = iter(pipe.execute())
        for queue in queues:
            total = sum(int(next(lengths)) for _ in _PRIORITY_SUFFIXES)
            fam["bridge_fleet_celery_queue_length"].add_metric([queue], total)

    def _workers(self, fam: dict[str, Any], owners: list[tuple[str, float]]) -> None:
        """Live leases, and leases that expired without a goodbye (a graceful stop sets
        the owner's score to 0; an expired one keeps its last renewal time)."""
        pipe = self.redis.pipeline(transaction=False)
        for owner, _ in owners:
            pipe.exists(self.keys.owner(owner))
        alive = pipe.execute() if owners else []
        live = sum(1 for a in alive if a)
        lost = sum(1 for (_, score), a in zip(owners, alive, strict=True) if not a and score > 0)
        fam["bridge_fleet_workers"].add_metric([], live)
        fam["bridge_fleet_leases_expired"].add_metric([], lost)

    def _route(self, fam: dict[str, Any], route: str, size: int, now: float) -> None:
        """The route's in-flight set: how many wait for submission, and the oldest ages
        (the walk stays in Redis, a slice per call; SSCAN may return a member twice)."""
        cursor, walked, waiting = "0", 0, 0
        oldest_waiting, oldest = now, now
        while size:  # an empty set costs no call
            cursor_raw, seen, slice_waiting, slice_oldest_waiting, slice_oldest = self._ages(
                inflight=self.keys.inflight(route), prefix=self.keys.request_prefix,
                cursor=cursor, count=_SLICE,
            )  # fmt: skip
            walked, waiting = walked + int(seen), waiting + int(slice_waiting)
            oldest_waiting = min(oldest_waiting, _stamp(slice_oldest_waiting, now))
            oldest = min(oldest, _stamp(slice_oldest, now))
            cursor = text(cursor_raw)
            if cursor == "0" or walked >= self.max_walk:
                break
        if size > walked > 0:
            waiting = round(waiting * size / walked)  # a part was read: scale it up
        fam["bridge_fleet_in_flight"].add_metric([route], size)
        fam["bridge_fleet_waiting"].add_metric([route], min(waiting, size))
        fam["bridge_fleet_oldest_waiting_seconds"].add_metric([route], now - oldest_waiting)
        fam["bridge_fleet_oldest_in_flight_seconds"].add_metric([route], now - oldest)

    def _streams(self, fam: dict[str, Any]) -> None:
        """Entries ever added to the request and dead-letter streams (Redis ≥ 7.0 counts
        them; before, the stream's length stands in) and the DLQ's length."""
        keys = self.keys
        for stream, total in ((keys.requests_stream, "bridge_fleet_stream_added"),
                              (keys.dlq_stream, "bridge_fleet_dead_letters_added")):  # fmt: skip
            try:
                info = self.redis.xinfo_stream(stream)
            except ResponseError:  # no such stream yet
                info = {}
            length = int(info.get("length", 0))
            if stream == keys.dlq_stream:
                fam["bridge_fleet_dead_letters"].add_metric([], length)
            fam[total].add_metric([], int(info.get("entries-added", length)))


def _stamp(at: Any, now: float) -> float:
    """A Unix time the script returned as text (empty: none, ``now``)."""
    stamp = text(at)
    return min(float(stamp), now) if stamp else now


def _entry_age(first: list[Any], now: float) -> float:
    """Age of a stream entry from its id (``<milliseconds>-<seq>``); 0 when none."""
    if not first:
        return 0.0
    entry_id = text(first[0][0])
    return max(0.0, now - int(entry_id.split("-", 1)[0]) / 1000)


def _health(fam: dict[str, Any], route: str, raw: Any, now: float) -> None:
    if raw is None:
        return
    try:
        snapshot = json.loads(text(raw))
    except ValueError:
        return
    if not isinstance(snapshot, dict):
        return
    if isinstance(snapshot.get("at"), int | float):
        fam["bridge_fleet_health_age_seconds"].add_metric([route], max(0.0, now - snapshot["at"]))
    fam["bridge_fleet_endpoint_up"].add_metric([route], 1 if snapshot.get("ok") else 0)
    health = snapshot.get("health") or {}
    for part, name in (("workers", "bridge_fleet_endpoint_workers"),
                       ("jobs", "bridge_fleet_endpoint_jobs")):  # fmt: skip
        for state, value in (health.get(part) or {}).items():
            if isinstance(value, int):
                fam[name].add_metric([route, str(state)], value)


def register(
    settings: BridgeSettings, registry: CollectorRegistry = REGISTRY
) -> FleetCollector | None:
    """Export the fleet's state with this process' metrics (once per process). A Redis
    URL this client cannot open is logged, and the process' own metrics still served."""
    try:
        client = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        log.warning("fleet metrics not exported: %s", exc)
        return None
    collector = FleetCollector(client, settings)
    registry.register(collector)
    return collector
