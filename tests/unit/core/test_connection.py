"""Redis URLs, plain and Sentinel: parsing, the errors a user gets, the clients built
(without connecting: no sockets in the unit tier), and the Celery options that follow."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from kombu.transport import redis as kombu_redis

from bridge.core.connection import (
    BlockingSentinelConnectionPool,
    SentinelTarget,
    async_redis,
    is_sentinel,
    parse_sentinel,
    sync_redis,
    transport_options,
)
from bridge.errors import ConfigError
from bridge.settings import BridgeSettings
from bridge.worker import broker
from bridge.worker.app import create_app

THREE = "sentinel://s1:26379;sentinel://s2:26380;sentinel://s3"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (THREE, True),
        ("SENTINEL://s1:1", True),
        ("sentinels://s1:1", True),
        ("redis://127.0.0.1:6379/0", False),
        ("rediss://h:1/0", False),
        ("unix:///tmp/redis.sock", False),
    ],
)
def test_is_sentinel(url: str, expected: bool) -> None:
    assert is_sentinel(url) is expected


def test_kombus_form_is_parsed_with_the_default_port() -> None:
    assert parse_sentinel(THREE, "mymaster") == SentinelTarget(
        sentinels=(("s1", 26379), ("s2", 26380), ("s3", 26379)), master_name="mymaster"
    )


def test_db_and_password_come_from_the_first_part_that_has_them() -> None:
    target = parse_sentinel("sentinel://s1:1;sentinel://:p%40ss@s2:2/4;sentinel://s3:3/7", "m")
    assert (target.db, target.password, target.username) == (4, "p@ss", None)
    named = parse_sentinel("sentinel://alice:secret@s1:1/2", "m")
    assert (named.username, named.password, named.db) == ("alice", "secret", 2)
    assert "secret" not in repr(named)


def test_sentinels_scheme_means_tls() -> None:
    assert parse_sentinel("sentinels://s1:1;sentinels://s2:2", "m").ssl is True
    assert parse_sentinel(THREE, "m").ssl is False


@pytest.mark.parametrize(
    ("url", "master", "message"),
    [
        (THREE, None, "BRIDGE_SENTINEL_MASTER"),
        (THREE, "", "BRIDGE_SENTINEL_MASTER"),
        ("sentinel://s1:notaport", "m", "part 1 (sentinel://s1:notaport): the port must be"),
        ("sentinel://s1:1;sentinel://s2:70000", "m", "part 2"),
        ("sentinel://s1:1;redis://s2:6379", "m", "every part must start with sentinel://"),
        ("sentinel://:1", "m", "no host"),
        ("sentinel://s1:1/zero", "m", "the database must be a number, not 'zero'"),
        ("sentinel://s1:1;sentinels://s2:2", "m", "mixes sentinel:// and sentinels://"),
        (";;", "m", "an empty sentinel URL"),
    ],
)
def test_mistakes_are_config_errors_that_say_what_is_wrong(
    url: str, master: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_sentinel(url, master)


def test_a_password_never_appears_in_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sentinel("sentinel://:hunter2@s1:bad", "m")
    assert "hunter2" not in str(caught.value)
    assert ":***@" in str(caught.value)


def test_transport_options_for_kombu_and_celery() -> None:
    assert transport_options("redis://h:1/0", None) == {}
    options = transport_options(THREE, "mymaster")
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["socket_timeout"] > 0
    with pytest.raises(ConfigError, match="BRIDGE_SENTINEL_MASTER"):
        transport_options(THREE, None)


def test_sync_client_asks_the_sentinels_for_the_named_primary() -> None:
    client = sync_redis("sentinel://:pw@s1:1/3;sentinel://s2:2", "mymaster")
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["socket_connect_timeout"] > 0
    manager = pool.sentinel_manager
    hosts = [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs[
        "port"]) for s in manager.sentinels]  # fmt: skip
    assert hosts == [("s1", 1), ("s2", 2)]
    assert manager.sentinels[0].connection_pool.connection_kwargs["socket_timeout"] > 0
    client.close()


def test_plain_urls_stay_plain() -> None:
    client = sync_redis("redis://h:7/2", socket_timeout=3)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == (
        "h", 7, 2, 3)  # fmt: skip
    client.close()


async def test_async_client_with_a_bounded_pool_that_waits() -> None:
    client = async_redis(THREE, "mymaster", max_connections=7, wait_s=12)
    pool = client.connection_pool
    assert isinstance(pool, BlockingSentinelConnectionPool)
    assert isinstance(pool, redis.asyncio.BlockingConnectionPool)
    assert (pool.service_name, pool.max_connections, pool.timeout) == ("mymaster", 7, 12)
    await client.aclose()
    plain = async_redis("redis://h:1/0", max_connections=5, wait_s=1)
    assert isinstance(plain.connection_pool, redis.asyncio.BlockingConnectionPool)
    await plain.aclose()
    loose = async_redis(THREE, "m")
    assert type(loose.connection_pool) is redis.asyncio.sentinel.SentinelConnectionPool
    await loose.aclose()


def test_settings_refuse_a_sentinel_url_without_its_master() -> None:
    with pytest.raises(ConfigError, match=r"redis_url: a sentinel:// URL needs the name"):
        BridgeSettings.load(redis_url=THREE, routes={})
    with pytest.raises(ConfigError, match=r"broker_url: .*port must be a number"):
        BridgeSettings.load(broker_url="sentinel://s:x", sentinel_master="m", routes={})
    with pytest.raises(ConfigError, match=r"result_backend: kombu and Celery know no sentinels"):
        BridgeSettings.load(result_backend="sentinels://s:1", sentinel_master="m", routes={})
    with pytest.raises(ConfigError, match=r"broker_url: kombu and Celery know no sentinels"):
        BridgeSettings.load(redis_url="sentinels://s:1", sentinel_master="m", routes={})
    tls = BridgeSettings.load(redis_url="sentinels://s:1", broker_url=THREE, result_backend=THREE,
                              sentinel_master="m", routes={})  # fmt: skip
    assert tls.redis_url == "sentinels://s:1"
    fine = BridgeSettings.load(redis_url=THREE, sentinel_master="mymaster", routes={})
    assert (fine.broker, fine.backend) == (THREE, THREE)


def test_the_app_gives_kombu_and_celery_the_master_name() -> None:
    app = create_app(BridgeSettings.load(redis_url=THREE, sentinel_master="mm", routes={}))
    assert app.conf.broker_transport == broker.TRANSPORT
    assert app.conf.broker_transport_options["master_name"] == "mm"
    assert app.conf.broker_transport_options["visibility_timeout"] > 0
    assert app.conf.result_backend_transport_options["master_name"] == "mm"
    plain = create_app(BridgeSettings.load(redis_url="redis://h:1/0", routes={}))
    assert plain.conf.broker_transport == broker.REDIS_TRANSPORT
    assert "master_name" not in plain.conf.broker_transport_options


def test_a_closed_broker_connection_is_a_connection_error_not_an_attribute_error() -> None:
    """kombu 5.7's Sentinel channel, closed after the primary died, rebuilds its pool
    from a connection that has dropped its URL: an AttributeError that stops the
    worker. The bridge's channel raises the connection error Celery recovers from."""
    stale = SimpleNamespace(client=None, default_port=26379)
    kombus = object.__new__(kombu_redis.SentinelChannel)
    kombus.connection = stale
    with pytest.raises(AttributeError):
        kombus._connparams()
    ours = object.__new__(broker.SentinelChannel)
    ours.connection = stale
    with pytest.raises(redis.ConnectionError):
        ours._connparams()
    assert issubclass(redis.ConnectionError, tuple(kombu_redis.Transport.connection_errors))


@pytest.mark.parametrize("channel_class", [broker.RedisChannel, broker.SentinelChannel])
def test_a_channel_builds_one_blocking_client_per_pool(channel_class: type) -> None:
    """kombu builds a redis-py client for every command it sends; the bridge's channels
    keep one per connection pool (a new pool, after a reconnection, gets a new one). The
    event loop's client is kombu's own each time."""
    channel = object.__new__(channel_class)
    channel.Client = redis.Redis
    first_pool = redis.ConnectionPool(host="127.0.0.1", port=1)
    channel._pool, channel._async_pool = first_pool, redis.ConnectionPool(host="x", port=2)
    client = channel._create_client()
    assert client.connection_pool is first_pool
    with channel.conn_or_acquire() as acquired:
        assert acquired is client
    assert channel._create_client() is client
    channel._pool = redis.ConnectionPool(host="127.0.0.1", port=1)  # reconnected
    fresh = channel._create_client()
    assert fresh is not client
    assert fresh.connection_pool is channel._pool
    assert channel._create_client(asynchronous=True) is not channel._create_client(
        asynchronous=True
    )


def test_kombus_own_channel_builds_a_client_per_command() -> None:
    """What the bridge's channels save (if kombu starts reusing its client, drop them)."""
    channel = object.__new__(kombu_redis.Channel)
    channel.Client = redis.Redis
    channel._pool = redis.ConnectionPool(host="127.0.0.1", port=1)
    assert channel._create_client() is not channel._create_client()


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://h:1/0", broker.REDIS_TRANSPORT),
        ("sentinel://s:1;sentinel://s:2", broker.TRANSPORT),
        ("rediss://h:1/0", None),
        ("redis+socket:///tmp/r.sock", None),
        ("amqp://guest@h//", None),
    ],
)
def test_which_broker_urls_use_the_bridges_transports(url: str, transport: str | None) -> None:
    assert broker.transport_for(url) == transport
