"""The one key schema: every Redis key and channel the bridge writes, and how long each
lives. Every part of the bridge (worker, doors, egress, CLI, demo, probes) builds its keys
here, so a key cannot be spelled two ways.

``python -m bridge.docs`` renders :func:`schema` into docs/redis.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.settings import BridgeSettings, RouteConfig

PENDING_TTL_S = 8 * 86_400
"""A request record not yet final (accepted, submitting, submitted): RunPod keeps a job
at most 7 days (its largest TTL), so a record outlives any job it could follow."""

TOMBSTONE_TTL_S = 86_400
"""A cancel that arrived before its request: the request is cancelled if it arrives
within a day; after that the cancel is forgotten."""

BREAKER_TTL_S = 86_400
"""A breaker untouched for a day is forgotten (closed)."""

HEALTH_TTL_FACTOR = 10
"""A health snapshot lives ten health intervals: stale ones vanish by themselves."""

OWNERS_TTL_S = 7 * 86_400
"""The index of workers that held leases; rewritten at every renewal."""

TALLY_BUCKET_S = 10
"""Finished requests are counted per route in buckets this many seconds wide."""

TALLY_TTL_S = 180
"""A tally bucket outlives the minute ``bridge top`` reads by two more."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One kind of key, for the generated documentation."""

    pattern: str
    type: str
    lifetime: str
    purpose: str


@dataclass(frozen=True, slots=True)
class Keys:
    """Keys of one bridge deployment (``prefix`` is ``BRIDGE_KEY_PREFIX``).

    The request and dead-letter streams are named by settings of their own (producers
    write to them), so they are carried here too.
    """

    prefix: str = "bridge"
    requests_stream: str = "bridge:requests"
    dlq_stream: str = "bridge:dlq"

    # -- per request ----------------------------------------------------------------------
    def request(self, request_id: str) -> str:
        return f"{self.prefix}:req:{request_id}"

    @property
    def request_prefix(self) -> str:
        """What :meth:`request` puts before an id (Lua scripts build keys with it)."""
        return f"{self.prefix}:req:"

    def task(self, task_id: str) -> str:
        """A Celery task id that differs from its request id: the alias revoke follows."""
        return f"{self.prefix}:task:{task_id}"

    def reply(self, request_id: str) -> str:
        """The reply list the CLI and the demo read (a producer may name any other)."""
        return f"{self.prefix}:reply:{request_id}"

    @property
    def reply_prefix(self) -> str:
        return f"{self.prefix}:reply:"

    def inflight(self, route: str) -> str:
        return f"{self.prefix}:inflight:{route}"

    def slots(self, route: str) -> str:
        """The route's fleet-wide ``max_in_flight`` slots: request id → the worker that
        took the slot (held from ``submitting`` until final)."""
        return f"{self.prefix}:slots:{route}"

    def route_stream(self, route: str) -> str:
        """Requests for ``route`` handed over by a worker that does not serve it."""
        return f"{self.prefix}:route:{route}:requests"

    @property
    def serving(self) -> str:
        """Which routes live workers serve: route → when a worker last said so."""
        return f"{self.prefix}:serving"

    @property
    def door_failures(self) -> str:
        """JSON-door entries being handled again, counted: one that keeps killing its
        worker is dead-lettered unread."""
        return f"{self.prefix}:door:failures"

    # -- workers --------------------------------------------------------------------------
    def owner(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}"

    @property
    def owners(self) -> str:
        return f"{self.prefix}:owners"

    def presence(self, owner: str) -> str:
        """The name (``CLIENT SETNAME``) of a worker's presence connection: Redis drops it
        the moment the worker's process dies (its socket is closed by the kernel)."""
        return f"{self.prefix}:presence:{owner}"

    @property
    def presence_prefix(self) -> str:
        return f"{self.prefix}:presence:"

    # -- endpoints and routes -------------------------------------------------------------
    def breaker(self, endpoint_id: str) -> str:
        return f"{self.prefix}:breaker:{endpoint_id}"

    def breaker_probe(self, endpoint_id: str) -> str:
        return f"{self.prefix}:breaker:{endpoint_id}:probe"

    def budget(self, endpoint_id: str, operation: str) -> str:
        return f"{self.prefix}:budget:{endpoint_id}:{operation}"

    def health(self, route: str) -> str:
        return f"{self.prefix}:health:{route}"

    def stat(self, name: str) -> str:
        return f"{self.prefix}:stats:{name}"

    def tally(self, route: str, bucket: int | str) -> str:
        """Requests of ``route`` that ended in the ``TALLY_BUCKET_S`` seconds numbered
        ``bucket`` (Unix time // width): counts per status and a latency histogram."""
        return f"{self.prefix}:tally:{route}:{bucket}"

    # -- channels -------------------------------------------------------------------------
    @property
    def cancel_channel(self) -> str:
        """Request ids whose cancel was asked (every tracker listens)."""
        return f"{self.prefix}:cancel"

    @property
    def wake_channel(self) -> str:
        """Request ids whose job changed (the webhook receiver publishes)."""
        return f"{self.prefix}:wake"

    @property
    def purge_channel(self) -> str:
        """Route names whose endpoint queue was purged."""
        return f"{self.prefix}:purge"

    def owns(self, key: str) -> bool:
        """Whether ``key`` is one of the bridge's own (the default reply lists excepted)."""
        if key in (self.requests_stream, self.dlq_stream):
            return True
        return key.startswith(f"{self.prefix}:") and not key.startswith(self.reply_prefix)


def schema(keys: Keys | None = None) -> list[KeySpec]:
    """Every key and channel, with its type and lifetime, for the documentation."""
    k = keys or Keys()
    day = 86_400
    return [
        KeySpec(k.request("{id}"), "hash",
                f"{PENDING_TTL_S // day} days while in flight; the route's result_ttl_s once "
                f"final; {TOMBSTONE_TTL_S // day} day for a cancel that came first",
                "one request: state, route, request, reply_to, job_id, cancel, owner, "
                "submissions, chunks, token, final, finisher, delivered"),
        KeySpec(k.task("{task_id}"), "string", f"{PENDING_TTL_S // day} days",
                "a Celery task id that is not its request id → the request id"),
        KeySpec(k.inflight("{route}"), "set", "members leave when final",
                "ids of the route's requests not yet final (recovery walks it)"),
        KeySpec(k.slots("{route}"), "hash", "fields leave when their request is final",
                "the route's max_in_flight slots, fleet-wide: request id → worker"),
        KeySpec(k.owner("{worker}"), "string", "the lease (lease_ttl_s), renewed",
                "a worker process is alive ('presence': it holds a presence connection)"),
        KeySpec(k.presence("{worker}"), "client name", "the worker's connection",
                "a live worker's presence connection (CLIENT LIST shows it)"),
        KeySpec(k.owners, "sorted set", f"{OWNERS_TTL_S // day} days, renewed",
                "workers by last renewal (recovery looks for silent ones)"),
        KeySpec(k.breaker("{endpoint}"), "hash", f"{BREAKER_TTL_S // day} day after its "
                "last change", "circuit breaker: state, failures, opened"),
        KeySpec(k.breaker_probe("{endpoint}"), "string", "breaker_open_s",
                "the one probe of a half-open breaker"),
        KeySpec(k.budget("{endpoint}", "{operation}"), "sorted set",
                "the budget's window + 1 s", "request budget: a sliding log"),
        KeySpec(k.health("{route}"), "string",
                f"{HEALTH_TTL_FACTOR} health intervals", "last health snapshot (JSON)"),
        KeySpec(k.route_stream("{route}"), "stream", "entries deleted once handled",
                "requests handed over by a worker that does not serve the route"),
        KeySpec(k.serving, "hash", "rewritten at every lease renewal",
                "route → when a live worker last said it serves it"),
        KeySpec(k.door_failures, "hash", "fields leave once handled",
                "JSON-door entries read again, counted while handled (poison detection)"),
        KeySpec(k.stat("{name}"), "string", "none (counters)",
                "ambiguous submissions counted per cause"),
        KeySpec(k.tally("{route}", "{bucket}"), "hash", f"{TALLY_TTL_S} s",
                f"requests ended in a {TALLY_BUCKET_S} s bucket: s:STATUS counts, l:N "
                "latency histogram (`bridge top`)"),
        KeySpec(k.reply("{id}"), "list", "the route's reply_ttl_s",
                "replies of `bridge submit` and the demo (producers name their own)"),
        KeySpec(k.requests_stream, "stream", "entries deleted once handled",
                "the JSON door (BRIDGE_REQUESTS_STREAM)"),
        KeySpec(k.dlq_stream, "stream", "capped at 100,000 entries",
                "dead letters (BRIDGE_DLQ_STREAM)"),
        KeySpec(k.cancel_channel, "channel", "-", "request ids to cancel"),
        KeySpec(k.wake_channel, "channel", "-", "request ids to look at now (webhooks)"),
        KeySpec(k.purge_channel, "channel", "-", "routes whose endpoint queue was purged"),
    ]  # fmt: skip


def keys_for(settings: BridgeSettings) -> Keys:
    """The key schema of a deployment's settings."""
    return Keys(settings.key_prefix, settings.requests_stream, settings.dlq_stream)


CELERY_KEY_PREFIXES = ("celery-task-meta-", "celery-taskset-meta-", "celery-chord-",
                       "_kombu.", "unacked")  # fmt: skip
"""Keys Celery and kombu keep on a Redis broker or result backend."""


def reply_target_problem(
    key: str, settings: BridgeSettings, route: RouteConfig | None = None
) -> str | None:
    """Why ``key`` may not receive replies (None: it may). A reply target may not be a
    key the bridge or Celery owns: the bridge's prefix (but for its reply lists), the
    request and dead-letter streams, a Celery queue or result key; and it must start with
    one of the configured ``reply_prefixes`` when any are set (the route's, else the
    global ones)."""
    keys = keys_for(settings)
    if keys.owns(key):
        return f"reply_to {key!r} is one of the bridge's own keys"
    queues = {settings.default_queue, *(r.queue for r in settings.routes.values())}
    if key in queues or key.startswith(CELERY_KEY_PREFIXES) or key == "celery":
        return f"reply_to {key!r} is a Celery queue or result key"
    for queue in queues:  # kombu's priority sub-queues: "<queue>\x06\x16<n>"
        if key.startswith(queue + "\x06"):
            return f"reply_to {key!r} is a Celery queue"
    prefixes = route.reply_prefixes if route and route.reply_prefixes is not None else None
    allowed = settings.reply_prefixes if prefixes is None else prefixes
    if allowed and not key.startswith((*allowed, keys.reply_prefix)):
        return f"reply_to {key!r} does not start with an allowed prefix ({', '.join(allowed)})"
    return None
