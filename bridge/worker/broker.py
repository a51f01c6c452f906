"""kombu's Redis Sentinel transport, with one repair (kombu 5.7.0).

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

Celery uses this transport for ``sentinel://`` broker URLs (``broker_transport``, set in
:func:`bridge.worker.app.create_app`).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

TRANSPORT = "bridge.worker.broker:SentinelTransport"
"""The transport's name for Celery's ``broker_transport`` setting."""


class SentinelChannel(kombu_redis.SentinelChannel):
    """kombu's Sentinel channel; a pool asked for after the connection closed is a
    connection error, not an AttributeError."""

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed (primary lost)")
        return super()._connparams(asynchronous)  # type: ignore[no-untyped-call]  # kombu


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel
