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

**The batching.** kombu pops one message per ``BRPOP`` and then records it as unacked
(``ZADD``/``HSET`` in a transaction), and removes each record when the message is
acknowledged: three round trips per message on the consumer thread, which the bridge's
event loop waits on for the GIL, so messages reached the loop one at a time. Here a
``BRPOP`` that returns a message is followed by one script (:data:`POP_RECORD`) that
records it and pops up to the consumer's remaining prefetch credit more from the same
queue (its priority lists in order), recording each in the same script: the messages
the script pops are never without their record. Only the one ``BRPOP`` took has kombu's
window between the pop and the record (a worker killed inside it loses that message, as
with kombu): one message per batch instead of every message.
A message the script cannot read (not kombu's format) stops the batch and is left in the
list, for the next ``BRPOP`` and kombu's own handling. A script that fails puts the
message ``BRPOP`` took back at the head of its list (kombu loses one whose unacked record
fails) and raises as kombu would; a Redis that refuses scripts (an ACL, a proxy) gets
kombu's one message at a time, and so do ``no_ack`` consumers (Celery's control
replies), which kombu records nothing for. Acknowledgements made on the
consumer's event loop (Celery's acks run there) are removed from the unacked records
together, once per turn of the loop, and when the channel closes; an acknowledgement
whose removal failed leaves its record behind, and the visibility timeout hands the
message back (the ledger answers a request delivered twice once).

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

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import QoS as VirtualQoS
from kombu.utils import encoding as kombu_encoding
from kombu.utils import json as kombu_json
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from bridge.core.connection import is_sentinel

TRANSPORT = "bridge.worker.broker:SentinelTransport"
"""The Sentinel transport's name for Celery's ``broker_transport`` setting."""
REDIS_TRANSPORT = "bridge.worker.broker:RedisTransport"
"""The Redis transport's name for Celery's ``broker_transport`` setting."""

log = logging.getLogger("bridge.broker")

# kombu's own codecs (untyped), so that records and messages read as kombu's do
_text: Callable[[Any], str] = kombu_encoding.bytes_to_str
_loads: Callable[[str], Any] = kombu_json.loads
_dumps: Callable[[Any], str] = kombu_json.dumps

MAX_BATCH = 64
"""Messages one pop takes at most besides the one ``BRPOP`` returned."""

POP_RECORD = """
local index, unacked, now, n = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
redis.call('ZADD', index, now, ARGV[3])
redis.call('HSET', unacked, ARGV[3], ARGV[4])
local popped = {}
for k = 3, #KEYS do
  while #popped < n do
    local raw = redis.call('LINDEX', KEYS[k], -1)
    if not raw then break end
    local ok, message = pcall(cjson.decode, raw)
    local props = ok and type(message) == 'table' and message.properties
    local info = type(props) == 'table' and props.delivery_info
    local tag = type(props) == 'table' and props.delivery_tag
    if type(tag) ~= 'string' or type(info) ~= 'table' or type(info.exchange) ~= 'string'
        or type(info.routing_key) ~= 'string' then
      return popped  -- not kombu's: left for BRPOP and kombu's own handling
    end
    redis.call('RPOP', KEYS[k])
    redis.call('ZADD', index, now, tag)
    redis.call('HSET', unacked, tag, '[' .. raw .. ',' .. cjson.encode(info.exchange) ..
               ',' .. cjson.encode(info.routing_key) .. ']')
    popped[#popped + 1] = raw
  end
end
return popped
"""
"""Record the message ``BRPOP`` returned (tag ``ARGV[3]``, record ``ARGV[4]``) as kombu
does (``[message, exchange, routing key]`` under its delivery tag, scored by time), then
pop and record up to ``ARGV[2]`` more from the queue's lists ``KEYS[3:]`` (highest
priority first); returns the messages popped, oldest first."""


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


def refuses_scripts(error: ResponseError) -> bool:
    """Whether a script's error says this Redis runs no scripts for us (an ACL, a proxy
    or managed Redis without them), not that it failed this once (out of memory, a
    replica, a key of the wrong type)."""
    return isinstance(error, NoPermissionError) or "unknown command" in str(error).lower()


class BatchQoS(kombu_redis.QoS):
    """kombu's Redis QoS, for messages recorded by :data:`POP_RECORD` and for
    acknowledgements removed together (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # kombu
        self.recorded: set[str] = set()
        """Delivery tags whose unacked record the pop has written."""
        self._acks: deque[str] = deque()

    def append(self, message: Any, delivery_tag: Any) -> None:
        if delivery_tag in self.recorded:
            VirtualQoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().append(message, delivery_tag)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: Any) -> None:
        if self.channel.connection.batching_acks():
            VirtualQoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            self._acks.append(delivery_tag)
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def flush_acks(self) -> None:
        """Remove the unacked records of the acknowledgements made since the last flush,
        in one transaction; when Redis is away they wait for the next flush."""
        acks = self._acks
        if not acks:
            return
        tags = [acks.popleft() for _ in range(len(acks))]
        try:
            with self.channel.conn_or_acquire() as client:
                client.pipeline().zrem(self.unacked_index_key, *tags).hdel(
                    self.unacked_key, *tags
                ).execute()
        except self.channel.connection_errors:  # Redis away: at the next flush
            acks.extendleft(reversed(tags))
            raise


class Batching:
    """A kombu Redis channel that pops in batches and removes acknowledgements together
    (see the module); mixed in before kombu's channel."""

    QoS = BatchQoS
    _pop_record: Any = None
    _in_poll: Any
    _unacking: frozenset[str] = frozenset()
    """Queues consumed without acknowledgements (``no_ack``: Celery's control replies):
    kombu records nothing for them, and neither does the pop."""

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs["no_ack"] if "no_ack" in kwargs else bool(args and args[0])
        self._unacking = (self._unacking | {queue}) if no_ack else (self._unacking - {queue})
        return super().basic_consume(queue, *args, **kwargs)  # type: ignore[misc]

    def _brpop_read(self, **options: Any) -> Any:
        if self.global_keyprefix:  # type: ignore[attr-defined]  # kombu's Channel
            return super()._brpop_read(**options)  # type: ignore[misc]
        client = self.client  # type: ignore[attr-defined]
        try:
            try:
                dest__item = client.parse_response(client.connection, "BRPOP", **options)
            except self.connection_errors:  # type: ignore[attr-defined]
                client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            queue = _text(dest).rsplit(self.sep, 1)[0]  # type: ignore[attr-defined]
            self._queue_cycle.rotate(queue)  # type: ignore[attr-defined]
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # type: ignore[attr-defined]
        self._deliver_batch(queue, _loads(_text(item)), (dest, item))
        return True

    def _deliver_batch(self, queue: str, first: Any, popped: tuple[bytes, bytes]) -> None:
        """Record ``first`` (what BRPOP returned: ``popped``, its list and its bytes) and
        pop more of ``queue`` in one script, then deliver them all, ``first`` first."""
        deliver = self.connection._deliver  # type: ignore[attr-defined]
        try:
            props = first["properties"]
            tag, info = props["delivery_tag"], props["delivery_info"]
            record = _dumps([first, info["exchange"], info["routing_key"]])
        except (TypeError, KeyError):  # not kombu's format: kombu's own handling
            deliver(first, queue)
            return
        if self._pop_record is False or queue in self._unacking:  # kombu's way
            deliver(first, queue)
            return
        qos: BatchQoS = self.qos  # type: ignore[attr-defined]
        credit = qos.can_consume_max_estimate()  # type: ignore[no-untyped-call]
        more = MAX_BATCH if credit is None else max(0, min(MAX_BATCH, credit - 1))
        if self._pop_record is None:
            self._pop_record = self.client.register_script(POP_RECORD)  # type: ignore[attr-defined]
        keys = [qos.unacked_index_key, qos.unacked_key,
                *(self._q_for_pri(queue, pri)  # type: ignore[attr-defined]
                  for pri in self.priority_steps)]  # type: ignore[attr-defined]  # fmt: skip
        try:
            with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
                raws = self._pop_record(keys=keys, args=[time.time(), more, tag, record],
                                        client=client)  # fmt: skip
        except ResponseError as exc:  # nothing recorded, nothing more popped
            if not refuses_scripts(exc):  # failed this once: the message back, the error up
                self._give_back(popped, tag)
                raise
            log.warning("the broker's Redis refused the batch pop (%s); one message at a "
                        "time from now on", exc)  # fmt: skip
            self._pop_record = False  # a managed Redis, an ACL: for good
            deliver(first, queue)  # kombu records it
            return
        messages = [first, *(_loads(_text(raw)) for raw in raws)]
        for at, message in enumerate(messages):
            tag = message["properties"]["delivery_tag"]
            qos.recorded.add(tag)
            try:
                deliver(message, queue)
            except BaseException:
                # the rest go back to the head of their queue now, in their order, not
                # after the visibility timeout
                for rest in reversed(messages[at + 1 :]):
                    qos.restore_by_tag(rest["properties"]["delivery_tag"])  # type: ignore[no-untyped-call]
                raise
            finally:
                qos.recorded.discard(tag)

    def _give_back(self, popped: tuple[bytes, bytes], tag: str) -> None:
        """Put a message BRPOP took back at the head of its list (kombu would have lost
        it: its unacked record failed after the pop)."""
        try:
            with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
                client.rpush(*popped)
        except (RedisError, OSError) as exc:
            log.error("message %s taken from %s could not be put back (%s: %s): it is lost",
                      tag, _text(popped[0]), type(exc).__name__, exc)  # fmt: skip

    def close(self) -> None:
        qos = self._qos  # type: ignore[attr-defined]  # None until a message came
        try:
            if isinstance(qos, BatchQoS):
                qos.flush_acks()
        except (RedisError, OSError) as exc:  # the records stay: the visibility timeout
            log.warning("acknowledgements not removed from the broker's unacked "
                        "records (%s); their messages come back after the visibility "
                        "timeout", type(exc).__name__)  # fmt: skip
        finally:  # a bug surfaces, after the unacknowledged messages are handed back
            super().close()  # type: ignore[misc]


class BatchingTransport:
    """A kombu Redis transport whose channels remove acknowledgements made on the
    consumer's event loop once per turn of it (see the module)."""

    _tick_thread: int | None = None

    def batching_acks(self) -> bool:
        """Whether an acknowledgement made now may wait for the loop's turn (made on the
        loop's thread, which flushes it before it polls again)."""
        return self._tick_thread == threading.get_ident()

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)  # type: ignore[misc]

        def flush_acks() -> None:
            self._tick_thread = threading.get_ident()
            for channel in self.channels:  # type: ignore[attr-defined]
                qos = channel._qos
                if isinstance(qos, BatchQoS):
                    try:
                        qos.flush_acks()
                    except (RedisError, OSError) as exc:  # BRPOP reports Redis away
                        log.warning("acknowledgements not removed from the broker's "
                                    "unacked records (%s: %s); kept for the next turn if "
                                    "Redis was away, else their messages come back after "
                                    "the visibility timeout", type(exc).__name__, exc)  # fmt: skip
                    except Exception:  # a bug: dropped, reported; Celery's loop goes on
                        log.exception("acknowledgements not removed from the broker's "
                                      "unacked records; their messages come back after "
                                      "the visibility timeout")  # fmt: skip

        loop.on_tick.add(flush_acks)


class RedisChannel(Batching, ReusedClient, kombu_redis.Channel):
    """kombu's Redis channel, batching and reusing its blocking client."""


class RedisTransport(BatchingTransport, kombu_redis.Transport):
    """kombu's Redis transport with :class:`RedisChannel`."""

    Channel = RedisChannel


class SentinelChannel(Batching, ReusedClient, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, reusing its blocking client; a pool asked for after the
    connection closed is a connection error, not an AttributeError."""

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed (primary lost)")
        return super()._connparams(asynchronous)  # type: ignore[no-untyped-call]  # kombu


class SentinelTransport(BatchingTransport, kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel


def transport_for(url: str) -> str | None:
    """The transport Celery should use for broker ``url`` (None: what its scheme says)."""
    if is_sentinel(url):
        return TRANSPORT
    return REDIS_TRANSPORT if url.split("://", 1)[0].strip().lower() == "redis" else None
