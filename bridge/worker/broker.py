"""kombu's Redis transports, with one repair and one saving (kombu 5.7.0).

**The saving.** kombu builds a new ``redis.Redis`` client object for every blocking
command it sends: each message's unacked record, each acknowledgement, each flush of
task events. Building one costs more than the command (redis-py fills a table of some
200 response callbacks each time: a quarter of a bridge worker's consumer thread, by
py-spy). :class:`ReusedClient` keeps one client per connection pool instead (a client is
only a pool and those callbacks; redis-py's clients are safe to share between threads);
a new pool (after a reconnection) gets a new client. Celery uses these transports for
``redis://`` and ``sentinel://`` broker URLs (``broker_transport``, set in
:func:`bridge.worker.app.create_app`); ``rediss://`` and socket URLs keep kombu's own.

**The repair** (Sentinel).
When the primary dies under a worker, Celery closes the broker connection, and closing
the channel hands its unacknowledged messages back (``restore_unacked``). That needs a
connection pool, which kombu has just dropped and rebuilds from the connection's URL,
but by then the connection has let go of its URL: ``_connparams`` raises
``AttributeError: 'NoneType' object has no attribute 'hostname'``, which Celery treats
as unrecoverable, and the worker exits instead of reconnecting to the new primary
(seen in tests/integration/bridge/test_sentinel.py). Here that case raises a
``ConnectionError``, which Celery treats as the connection error it is: it reconnects,
asks the sentinels for the new primary, and the messages stay in Redis's ``unacked``
hash until the visibility timeout hands them back.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.core.connection import is_sentinel

TRANSPORT = "bridge.worker.broker:SentinelTransport"
"""The Sentinel transport's name for Celery's ``broker_transport`` setting."""
REDIS_TRANSPORT = "bridge.worker.broker:RedisTransport"
"""The Redis transport's name for Celery's ``broker_transport`` setting."""


class ReusedClient:
    """A kombu Redis channel that reuses its blocking client (see the module)."""

    _reused: tuple[Any, Any] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        create = super()._create_client  # type: ignore[misc]  # kombu's Channel, mixed in
        if asynchronous:  # the event loop's client: kombu's own, each time
            return create(asynchronous)
        pool = self.pool  # type: ignore[attr-defined]
        reused = self._reused
        if reused is None or reused[0] is not pool:
            reused = self._reused = (pool, create(False))
        return reused[1]


class RedisChannel(ReusedClient, kombu_redis.Channel):
    """kombu's Redis channel, reusing its blocking client."""


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`RedisChannel`."""

    Channel = RedisChannel


class SentinelChannel(ReusedClient, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, reusing its blocking client; a pool asked for after the
    connection closed is a connection error, not an AttributeError."""

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed (primary lost)")
        return super()._connparams(asynchronous)  # type: ignore[no-untyped-call]  # kombu


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel


def transport_for(url: str) -> str | None:
    """The transport Celery should use for broker ``url`` (None: what its scheme says)."""
    if is_sentinel(url):
        return TRANSPORT
    return REDIS_TRANSPORT if url.split("://", 1)[0].strip().lower() == "redis" else None
