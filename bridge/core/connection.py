"""Redis clients for a URL: a plain server (``redis://``, ``rediss://``, ``unix://``) or a
Sentinel-managed primary, spelled the way kombu and Celery spell it::

    sentinel://[[user]:password@]host:port[/db];sentinel://host:port;...

with the primary's name (the ``sentinel monitor NAME ...`` of the sentinels' config)
given apart from the URL: the ``sentinel_master`` setting (``BRIDGE_SENTINEL_MASTER``),
the ``master_name`` transport option of kombu and Celery. Every part of the bridge that
talks to Redis builds its client here, so the two forms are understood everywhere.

A Sentinel client asks the sentinels for the primary's address on every new connection
and drops its connections when the address changes, so after a failover the next
command (or the caller's retry of the one that failed) reaches the new primary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from bridge.errors import ConfigError

SENTINEL_SCHEMES = ("sentinel", "sentinels")
"""``sentinels://`` is the TLS form (TLS to the primary and to the sentinels)."""
DEFAULT_SENTINEL_PORT = 26379

CONNECT_TIMEOUT_S = 5.0
"""Connecting to a primary (or a plain server): long enough for a loaded machine, short
enough that a dead address fails fast and the caller retries with the new one."""
SENTINEL_TIMEOUT_S = 1.0
"""Connecting to and asking a sentinel: sentinels answer at once; one that does not is
skipped for the next (measured: the sentinels of a 3-node loopback set answer in < 1 ms)."""


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A Sentinel URL, parsed: where the sentinels are, and what to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names sentinels (``sentinel://...``), not a Redis server."""
    return url.split("://", 1)[0].strip().lower() in SENTINEL_SCHEMES


def parse_sentinel(url: str, master_name: str | None) -> SentinelTarget:
    """Parse ``sentinel://host:port;sentinel://host:port/db`` (kombu's and Celery's form).

    The database, user and password may be given on any one of the parts (the first one
    that has them wins, as in Celery). Raises :class:`ConfigError` naming what is wrong:
    no master name, a part that is not ``sentinel://``, a bad host or port, a bad db.
    """
    if not master_name:
        raise ConfigError(
            "a sentinel:// URL needs the name of the primary the sentinels watch: set "
            "BRIDGE_SENTINEL_MASTER (the NAME of `sentinel monitor NAME host port quorum`)"
        )
    parts = [p.strip() for p in url.split(";") if p.strip()]
    if not parts:
        raise ConfigError("an empty sentinel URL: give sentinel://host:port[;...]")
    sentinels: list[tuple[str, int]] = []
    db: int | None = None
    username: str | None = None
    password: str | None = None
    schemes: set[str] = set()
    for number, part in enumerate(parts, 1):
        where = f"sentinel URL part {number} ({_masked(part)})"
        split = urlsplit(part)
        scheme = split.scheme.lower()
        if scheme not in SENTINEL_SCHEMES:
            raise ConfigError(
                f"{where}: every part must start with sentinel:// (or sentinels:// for "
                "TLS), separated by ';'"
            )
        schemes.add(scheme)
        try:
            port = split.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ConfigError(f"{where}: the port must be a number from 1 to 65535") from None
        host = split.hostname
        if not host:
            raise ConfigError(f"{where}: no host")
        sentinels.append((host, port))
        path = split.path.strip("/")
        if path and db is None:
            if not path.isdigit():
                raise ConfigError(f"{where}: the database must be a number, not {path!r}")
            db = int(path)
        if split.password is not None and password is None:
            password = unquote(split.password)
            username = unquote(split.username) if split.username else None
    if len(schemes) > 1:
        raise ConfigError("a sentinel URL mixes sentinel:// and sentinels:// parts")
    return SentinelTarget(
        sentinels=tuple(sentinels),
        master_name=master_name,
        db=db or 0,
        username=username,
        password=password,
        ssl=schemes == {"sentinels"},
    )


def transport_options(url: str, master_name: str | None) -> dict[str, Any]:
    """kombu's and Celery's transport options for ``url``: for a Sentinel URL, the
    primary's name and the sentinels' timeouts (checked here, so a mistake is a
    ConfigError at startup, not a ValueError in the first publish); else nothing."""
    if not is_sentinel(url):
        return {}
    target = parse_sentinel(url, master_name)
    return {
        "master_name": target.master_name,
        "sentinel_kwargs": _sentinel_kwargs(target),
    }


def sync_redis(url: str, master_name: str | None = None, **kwargs: Any) -> redis.Redis:
    """A blocking client on ``url`` (a Redis URL, or a Sentinel URL and its primary's
    name); ``kwargs`` go to the connections (``socket_timeout=``...)."""
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    target = parse_sentinel(url, master_name)
    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]  # redis-py: unannotated
        list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target), **_auth(target)
    )
    client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]  # the same
        target.master_name, redis_class=redis.Redis, db=target.db, ssl=target.ssl, **kwargs
    )
    return client


class BlockingSentinelConnectionPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """A Sentinel pool that waits for a free connection instead of failing (the
    worker's thousands of jobs share one bounded pool)."""


def async_redis(
    url: str,
    master_name: str | None = None,
    *,
    max_connections: int | None = None,
    wait_s: float | None = None,
    **kwargs: Any,
) -> redis.asyncio.Redis:
    """An asyncio client on ``url`` (see :func:`sync_redis`). With ``wait_s``, its pool
    holds at most ``max_connections`` and a caller waits up to ``wait_s`` for one."""
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    blocking = wait_s is not None
    if blocking:
        kwargs.update(max_connections=max_connections or 50, timeout=wait_s)
    elif max_connections is not None:
        kwargs["max_connections"] = max_connections
    if not is_sentinel(url):
        if blocking:
            pool = redis.asyncio.BlockingConnectionPool.from_url(url, **kwargs)
            return redis.asyncio.Redis(connection_pool=pool)
        return redis.asyncio.Redis.from_url(url, **kwargs)
    target = parse_sentinel(url, master_name)
    manager = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]  # unannotated
        list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target), **_auth(target)
    )
    pool_class = (
        BlockingSentinelConnectionPool
        if blocking
        else redis.asyncio.sentinel.SentinelConnectionPool
    )
    client: redis.asyncio.Redis = manager.master_for(
        target.master_name,
        redis_class=redis.asyncio.Redis,
        connection_pool_class=pool_class,
        db=target.db,
        ssl=target.ssl,
        **kwargs,
    )
    return client


def _sentinel_kwargs(target: SentinelTarget) -> dict[str, Any]:
    # Sentinels rarely have the primary's password; one given on the URL is the
    # primary's (as in kombu and Celery). Without timeouts a dead sentinel's address
    # would hang every reconnect for the kernel's TCP timeout.
    options: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        "socket_timeout": SENTINEL_TIMEOUT_S,
    }
    if target.ssl:
        options["ssl"] = True
    return options


def _auth(target: SentinelTarget) -> dict[str, Any]:
    auth: dict[str, Any] = {}
    if target.password is not None:
        auth["password"] = target.password
    if target.username is not None:
        auth["username"] = target.username
    return auth


def _masked(part: str) -> str:
    split = urlsplit(part)
    if split.password is None:
        return part
    return part.replace(f":{split.password}@", ":***@", 1)
