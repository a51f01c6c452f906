"""Lua scripts called with named keys and arguments, batched per loop turn.

Redis passes a script positional ``KEYS[i]`` and ``ARGV[i]``; a :class:`NamedScript`
declares their names once, binds them to Lua locals of the same names, and is called
with keyword arguments, so a caller cannot swap two of them unnoticed.

On an asyncio client, the script calls issued in one turn of the event loop (by however
many requests) go to Redis together, in one pipeline, in the order they were made
(:class:`ScriptBatcher`); each caller gets its own reply or its own error. A worker with
a thousand requests in flight pays one round trip, not a thousand, for the ledger steps
they take in the same turn (measured in ``bench/README.md``). One pipeline of a client's
calls is in flight at a time: the calls made while it is go together in the next one, so
a busy worker's replies from the endpoint, which arrive one per turn, share round trips
too, and an idle worker's call leaves at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from redis.client import Redis as SyncRedis
from redis.exceptions import NoScriptError, ResponseError

MAX_BATCH = 512
"""At most this many script calls in one pipeline (a larger turn is split)."""

HOLD_S = 1.0
"""A pipeline in flight longer than this no longer holds the next calls back. A loaded
worker's pipelines come back in milliseconds; one that hangs (a connection whose peer
vanished without closing it: the worker's client has no read timeout, its pub/sub
connections wait for messages) would otherwise stop every ledger step of the worker."""


class NamedScript:
    """A Lua script whose keys and arguments have names.

    Args:
        body: the script, using the names below as Lua locals.
        keys: names of the keys, in order.
        args: names of the other arguments, in order.
    """

    def __init__(self, body: str, *, keys: Sequence[str] = (), args: Sequence[str] = ()) -> None:
        self.keys = tuple(keys)
        self.args = tuple(args)
        prelude = [f"local {name} = KEYS[{i}]" for i, name in enumerate(self.keys, 1)]
        prelude += [f"local {name} = ARGV[{i}]" for i, name in enumerate(self.args, 1)]
        self.source = "\n".join([*prelude, body.strip()]) + "\n"
        # The name Redis knows a script by (EVALSHA), not a security measure.
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    def bind(self, redis: AsyncRedis | SyncRedis) -> BoundScript:
        """Register on ``redis`` (sync or asyncio client). On an asyncio client the calls
        are batched per loop turn (see :class:`ScriptBatcher`)."""
        if isinstance(redis, AsyncRedis):
            return BoundScript(self, batcher_for(redis).call_for(self))
        return BoundScript(self, redis.register_script(self.source))


class BoundScript:
    """A :class:`NamedScript` registered on a client; call it with keyword arguments.
    With an asyncio client the call returns an awaitable."""

    def __init__(self, script: NamedScript, registered: Any) -> None:
        self._script = script
        self._registered = registered

    def __call__(self, **values: Any) -> Any:
        missing = set(self._script.keys) | set(self._script.args)
        missing -= set(values)
        extra = set(values) - set(self._script.keys) - set(self._script.args)
        if missing or extra:
            raise TypeError(
                f"script arguments: missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        return self._registered(
            keys=[values[name] for name in self._script.keys],
            args=[values[name] for name in self._script.args],
        )


@dataclass(slots=True)
class _Flight:
    """A pipeline in flight (with the calls after it held back)."""

    loop: asyncio.AbstractEventLoop
    since: float
    """When it left, on its loop's clock."""
    timer: asyncio.TimerHandle | None = None
    """Ends the hold after ``hold_s``, while calls wait."""

    def forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass(slots=True)
class _Call:
    script: NamedScript | None  # None: a plain command, in ``args``
    keys: list[Any]
    args: list[Any]
    future: asyncio.Future[Any]


class ScriptBatcher:
    """Sends the script calls (and plain commands queued with :meth:`command`) made on
    one asyncio client in one loop turn as one pipeline (``EVALSHA`` each, without a
    transaction: each script is atomic on its own, as when called alone). While a
    pipeline is in flight, new calls wait and leave together, in order, when it is back:
    one pipeline at a time, so batches grow with the load and Redis receives the calls
    in the order they were made. A pipeline still out after ``hold_s`` holds nothing
    back any more: the calls waiting for it leave on their own (a connection that hangs
    must not stop every ledger step of the worker). A script Redis does not know yet
    (``NOSCRIPT``) is loaded and its calls sent again, in order. An error of one call
    reaches only its caller; a connection error reaches every caller of the batch.

    Args:
        redis: the asyncio client the pipelines run on.
        max_batch: most calls in one pipeline.
        hold_s: longest a pipeline in flight holds the next calls back.
    """

    def __init__(
        self, redis: AsyncRedis, max_batch: int = MAX_BATCH, hold_s: float = HOLD_S
    ) -> None:
        # Weak: the batcher lives as long as its client (see batcher_for), no longer.
        self._redis = weakref.ref(redis)
        self.max_batch = max_batch
        self.hold_s = hold_s
        self._pending: list[_Call] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None
        """The loop a flush is scheduled on."""
        self._flight: _Flight | None = None
        """The pipeline in flight that the next calls wait for."""
        self.round_trips = 0
        """Pipelines sent (for tests and benchmarks)."""

    def call_for(self, script: NamedScript) -> Any:
        """The function a :class:`BoundScript` calls: ``(keys=, args=) -> awaitable``."""

        def call(keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
            return self.submit(script, keys, args)

        return call

    def submit(self, script: NamedScript, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        """Queue one call for the end of this loop turn; its reply arrives on the future."""
        return self._queue(_Call(script, keys, args, asyncio.get_running_loop().create_future()))

    def _queue(self, call: _Call) -> asyncio.Future[Any]:
        loop = call.future.get_loop()
        # A loop stopped before it sent its batch, or while its pipeline was in flight:
        # those callers are gone with it.
        stale = False
        if self._scheduled is not None and self._scheduled is not loop:
            self._scheduled, stale = None, True
        flight = self._flight
        if flight is not None and flight.loop is not loop:
            flight.forget()
            self._flight, flight, stale = None, None, True
        if stale:
            self._pending = [c for c in self._pending if c.future.get_loop() is loop]
        self._pending.append(call)
        if self._scheduled is not None:
            return call.future
        if flight is None:
            self._schedule(loop)
        elif flight.timer is None:  # held: until the flight is back, or hold_s after it left
            flight.timer = loop.call_at(flight.since + self.hold_s, self._hold_over, flight)
        return call.future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = loop
        # call_soon runs after every callback already due in this turn, so the calls they
        # make join the batch.
        loop.call_soon(self._flush_soon)

    def _hold_over(self, flight: _Flight) -> None:
        """``flight`` is out for ``hold_s``: the calls waiting for it go without it."""
        flight.timer = None
        if self._flight is flight and self._pending and self._scheduled is None:
            self._schedule(flight.loop)

    def command(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one plain command (``"SET", key, value``) for the end of this loop turn,
        in the same pipeline as the scripts; its reply arrives on the future."""
        return self._queue(_Call(None, [], list(args), asyncio.get_running_loop().create_future()))

    def _flush_soon(self) -> None:
        self._scheduled = None
        calls, self._pending = self._pending, []
        if not calls:
            return
        loop = asyncio.get_running_loop()
        if self._flight is not None:
            self._flight.forget()  # held past hold_s: no longer the one to wait for
        flight = self._flight = _Flight(loop, loop.time())
        task = loop.create_task(self._send_in_turn(calls, flight))
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)

    async def _send_in_turn(self, calls: list[_Call], flight: _Flight) -> None:
        """Sends ``calls`` (at most ``max_batch`` per pipeline, one after the other), then
        the calls made meanwhile."""
        try:
            for start in range(0, len(calls), self.max_batch):
                await self._send(calls[start : start + self.max_batch])
        finally:
            flight.forget()
            if self._flight is flight:
                self._flight = None
                # (a closed loop: this coroutine is being collected, its callers are gone)
                if self._pending and self._scheduled is None and not flight.loop.is_closed():
                    self._schedule(flight.loop)

    async def _send(self, calls: list[_Call]) -> None:
        live = [c for c in calls if not c.future.done()]  # a cancelled caller still
        if not live:  # has its call sent when others share the batch; alone it is not
            return
        try:
            replies = await self._execute(live)
        except asyncio.CancelledError:  # the loop is closing: so are its callers
            for call in live:
                call.future.cancel()
            raise
        except Exception as exc:  # every caller of the batch gets the error
            for call in live:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        for call, reply in zip(live, replies, strict=True):
            if call.future.done():
                continue
            if isinstance(reply, Exception):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)

    @property
    def redis(self) -> AsyncRedis:
        redis = self._redis()
        if redis is None:  # pragma: no cover - a call holds its client
            raise RuntimeError("the Redis client of these scripts is gone")
        return redis

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        replies = await self._pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:  # first use on this server (or after SCRIPT FLUSH / a restart)
            pipe = self.redis.pipeline(transaction=False)
            scripts: dict[str, NamedScript] = {}
            for i in missing:
                script = calls[i].script
                if script is not None:  # only a script can be missing
                    scripts[script.sha] = script
            for script in scripts.values():
                pipe.script_load(script.source)
            await pipe.execute()
            again = await self._pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        self.round_trips += 1
        if len(calls) == 1:  # alone in its turn: a plain call costs less than a pipeline
            return [await self._alone(calls[0])]
        pipe = self.redis.pipeline(transaction=False)
        for call in calls:
            if call.script is None:
                pipe.execute_command(*call.args)
            else:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def _alone(self, call: _Call) -> Any:
        """One call's reply, or its Redis error as the reply (as a pipeline gives it)."""
        try:
            if call.script is None:
                return await self.redis.execute_command(*call.args)  # type: ignore[no-untyped-call]  # untyped in redis-py
            return await self.redis.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        except ResponseError as exc:  # NoScriptError included: handled by the caller
            return exc


_RUNNING: set[asyncio.Future[None]] = set()
"""Batches being sent (a task with no other reference could be collected mid-way)."""

_BATCHERS: weakref.WeakKeyDictionary[AsyncRedis, ScriptBatcher] = weakref.WeakKeyDictionary()


def batcher_for(redis: AsyncRedis) -> ScriptBatcher:
    """The one batcher of an asyncio client (every script bound to it shares it)."""
    batcher = _BATCHERS.get(redis)
    if batcher is None:
        batcher = _BATCHERS[redis] = ScriptBatcher(redis)
    return batcher


def text(value: Any) -> str:
    """A Redis reply as text (redis-py returns bytes unless told otherwise)."""
    return value.decode() if isinstance(value, bytes) else str(value)
