"""The one key schema: every Redis key and channel the bridge writes, and how long each
lives. Every part of the bridge (worker, doors, egress, CLI, demo, probes) builds its keys
here, so a key cannot be spelled two ways.

``python -m bridge.docs`` renders :func:`schema` into the README's operations section.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    # -- workers --------------------------------------------------------------------------
    def owner(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}"

    @property
    def owners(self) -> str:
        return f"{self.prefix}:owners"

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
                "one request: state, route, request, job_id, cancel, owner, submissions, "
                "chunks, token, final"),
        KeySpec(k.task("{task_id}"), "string", f"{PENDING_TTL_S // day} days",
                "a Celery task id that is not its request id → the request id"),
        KeySpec(k.inflight("{route}"), "set", "members leave when final",
                "ids of the route's requests not yet final (recovery walks it)"),
        KeySpec(k.owner("{worker}"), "string", "the lease (lease_ttl_s), renewed",
                "a worker process is alive"),
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
        KeySpec(k.stat("{name}"), "string", "none (counters)",
                "ambiguous submissions counted per cause"),
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
