"""The request ledger in Redis: every accepted request, its job id, and its one final reply.

Keys (``P`` is the configured prefix):

- ``P:req:{id}`` hash: ``state`` (``accepted`` → ``submitting`` → ``submitted`` →
  ``final``; ``tombstone`` for a cancel that arrived first), ``route``, ``request``
  (the request as JSON), ``job_id``, ``cancel`` (1 when a cancel was asked), ``owner``,
  ``final`` (the final reply as JSON), ``created``.
- ``P:inflight:{route}`` set: ids of the route's requests not yet final.
- channel ``P:cancel``: request ids whose cancel was asked (trackers listen).
- channel ``P:wake``: request ids whose job changed (webhooks, purges).

Every state change that must happen once is one Lua script, so two processes racing
to finish a request cannot both deliver a final reply.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

_CLAIM = """
local key = KEYS[1]
local state = redis.call('HGET', key, 'state')
if state and state ~= 'tombstone' then
  return {'duplicate', state, redis.call('HGET', key, 'cancel') or '0'}
end
redis.call('HSET', key, 'state', 'accepted', 'route', ARGV[1], 'request', ARGV[2],
           'created', ARGV[3], 'owner', ARGV[4])
redis.call('EXPIRE', key, ARGV[5])
redis.call('SADD', KEYS[2], ARGV[6])
if ARGV[7] ~= '' and ARGV[7] ~= ARGV[6] then
  redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[5])
  if redis.call('HGET', KEYS[4], 'cancel') == '1' then
    state = 'tombstone'
  end
end
if state == 'tombstone' then
  return {'new', 'accepted', '1'}
end
return {'new', 'accepted', '0'}
"""

_SUBMITTING = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'accepted' then
  redis.call('HSET', KEYS[1], 'state', 'submitting', 'owner', ARGV[1])
  return {'ok', redis.call('HGET', KEYS[1], 'cancel') or '0'}
end
return {state or 'missing', redis.call('HGET', KEYS[1], 'cancel') or '0'}
"""

_SUBMITTED = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'submitting' or state == 'accepted' then
  redis.call('HSET', KEYS[1], 'state', 'submitted', 'job_id', ARGV[1])
  return {'ok', redis.call('HGET', KEYS[1], 'cancel') or '0'}
end
return {state or 'missing', redis.call('HGET', KEYS[1], 'cancel') or '0'}
"""

_FINALIZE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'final' or not state then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'final', 'final', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[5])
if ARGV[3] ~= '' then
  redis.call('RPUSH', ARGV[3], ARGV[1])
  redis.call('EXPIRE', ARGV[3], ARGV[4])
end
return 1
"""

_CHUNK = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'final' or not state then
  return -1
end
local seq = redis.call('HINCRBY', KEYS[1], 'chunks', 1) - 1
redis.call('RPUSH', ARGV[1], ARGV[2] .. seq .. ARGV[3])
redis.call('EXPIRE', ARGV[1], ARGV[4])
return seq
"""

_ORPHANS = """
-- Requests whose owner's lease is gone become ours (at most ARGV[3] per call). Unless
-- ARGV[5] is '1' (a full scan), the in-flight sets are only walked when a registered
-- owner missed its renewals, so a healthy fleet pays one ZRANGEBYSCORE per call. Keys
-- are built here from the prefix: the ledger runs on one Redis, not a cluster.
local prefix, me, limit, ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local owners = prefix .. ':owners'
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = {}
for _, o in ipairs(redis.call('ZRANGEBYSCORE', owners, '-inf', now_ms - ttl_ms)) do
  if redis.call('EXISTS', prefix .. ':owner:' .. o) == 0 then
    table.insert(dead, o)
  end
end
if #dead == 0 and ARGV[5] ~= '1' then
  return {}
end
local found = {}
for i = 6, #ARGV do
  local set = prefix .. ':inflight:' .. ARGV[i]
  for _, id in ipairs(redis.call('SMEMBERS', set)) do
    local key = prefix .. ':req:' .. id
    local state = redis.call('HGET', key, 'state')
    local owner = redis.call('HGET', key, 'owner')
    if (not state) or state == 'final' then
      redis.call('SREM', set, id)
    elseif owner == me then
      if ARGV[5] == '1' then
        table.insert(found, '=' .. id)  -- ours already ('=' marks it): resumed if unfollowed
      end
    elseif redis.call('EXISTS', prefix .. ':owner:' .. (owner or '')) == 0 then
      redis.call('HSET', key, 'owner', me)
      table.insert(found, id)
      if #found >= limit then
        return found
      end
    end
  end
end
for _, o in ipairs(dead) do
  redis.call('ZREM', owners, o)  -- nothing of theirs is left to adopt
end
return found
"""

_REOPEN = """
if redis.call('HGET', KEYS[1], 'state') == 'submitting' then
  redis.call('HSET', KEYS[1], 'state', 'accepted')
  return 1
end
return 0
"""

CANCEL_SCRIPT = """
local key = KEYS[1]
local alias = redis.call('GET', KEYS[2])
if alias then
  key = ARGV[4] .. alias
end
local state = redis.call('HGET', key, 'state')
if state == 'final' then
  return 'final'
end
if state == 'tombstone' then
  return 'unknown'
end
if not state then
  redis.call('HSET', key, 'state', 'tombstone', 'cancel', '1')
  redis.call('EXPIRE', key, ARGV[2])
  return 'unknown'
end
redis.call('HSET', key, 'cancel', '1')
redis.call('PUBLISH', ARGV[1], alias or ARGV[3])
return state
"""


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`Ledger.claim`: ``new`` is False for a duplicate."""

    new: bool
    state: str
    cancel_requested: bool


class Ledger:
    """Request records in Redis (see the module docstring for the keys)."""

    def __init__(self, redis: Redis, prefix: str = "bridge", *, pending_ttl_s: int = 8 * 86400):
        self.redis = redis
        self.prefix = prefix
        self.pending_ttl_s = pending_ttl_s
        self.cancel_channel = f"{prefix}:cancel"
        self.wake_channel = f"{prefix}:wake"
        self._claim = redis.register_script(_CLAIM)
        self._submitting = redis.register_script(_SUBMITTING)
        self._submitted = redis.register_script(_SUBMITTED)
        self._finalize = redis.register_script(_FINALIZE)
        self._chunk = redis.register_script(_CHUNK)
        self._cancel = redis.register_script(CANCEL_SCRIPT)
        self._orphans = redis.register_script(_ORPHANS)
        self._reopen = redis.register_script(_REOPEN)

    def key(self, request_id: str) -> str:
        return f"{self.prefix}:req:{request_id}"

    def inflight_key(self, route: str) -> str:
        return f"{self.prefix}:inflight:{route}"

    def task_key(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    async def claim(
        self,
        request_id: str,
        route: str,
        request: dict[str, Any],
        owner: str,
        task_id: str | None = None,
    ) -> Claim:
        """Record a request before anything is sent; a known id is a duplicate. A Celery
        task id that differs from the request id is kept as an alias (for revoke)."""
        result = await self._claim(
            keys=[
                self.key(request_id),
                self.inflight_key(route),
                self.task_key(task_id or ""),
                self.key(task_id or ""),
            ],
            args=[
                route,
                json.dumps(request, separators=(",", ":")),
                f"{time.time():.3f}",
                owner,
                self.pending_ttl_s,
                request_id,
                task_id or "",
            ],
        )
        kind, state, cancel = (_text(v) for v in result)
        return Claim(new=kind == "new", state=state, cancel_requested=cancel == "1")

    async def mark_submitting(self, request_id: str, owner: str) -> tuple[str, bool]:
        """``("ok", cancel)`` when we may POST /run now; else the state that forbids it."""
        state, cancel = await self._submitting(keys=[self.key(request_id)], args=[owner])
        return _text(state), _text(cancel) == "1"

    async def mark_submitted(self, request_id: str, job_id: str) -> tuple[str, bool]:
        """Record the endpoint's job id; returns ``("ok", cancel_requested)``."""
        state, cancel = await self._submitted(keys=[self.key(request_id)], args=[job_id])
        return _text(state), _text(cancel) == "1"

    async def finalize(
        self,
        request_id: str,
        route: str,
        reply: dict[str, Any],
        *,
        reply_to: str | None,
        reply_ttl_s: int,
        result_ttl_s: int,
    ) -> bool:
        """Store the final reply and push it to ``reply_to``, once: False if another
        process (or an earlier call) already finished this request."""
        won = await self._finalize(
            keys=[self.key(request_id), self.inflight_key(route)],
            args=[
                json.dumps(reply, separators=(",", ":")),
                result_ttl_s,
                reply_to or "",
                reply_ttl_s,
                request_id,
            ],
        )
        return bool(won)

    async def push_chunk(self, request_id: str, reply_to: str, output: Any, ttl_s: int) -> int:
        """Push a stream chunk ``{"type": "chunk", "id", "seq", "output"}``, unless the
        request is already final (then -1). ``seq`` counts from 0 in the ledger, so it
        stays in order even when another process resumes the stream."""
        head = json.dumps({"type": "chunk", "id": request_id}, separators=(",", ":"))
        tail = json.dumps(output, separators=(",", ":"))
        seq = await self._chunk(
            keys=[self.key(request_id)],
            args=[reply_to, head[:-1] + ',"seq":', ',"output":' + tail + "}", ttl_s],
        )
        return int(seq)

    async def request_cancel(self, request_id: str) -> str:
        """Ask for a cancel. Returns the request's state: ``unknown`` (a tombstone is left
        so the request is cancelled if it arrives later), ``final``, or the live state
        (trackers are told through the cancel channel)."""
        result = await self._cancel(
            keys=[self.key(request_id), self.task_key(request_id)],
            args=[self.cancel_channel, self.pending_ttl_s, request_id, f"{self.prefix}:req:"],
        )
        return _text(result)

    async def get(self, request_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.key(request_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def final_reply(self, request_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.key(request_id), "final")
        return json.loads(raw) if raw else None

    async def inflight(self, route: str) -> set[str]:
        members = await self.redis.smembers(self.inflight_key(route))
        return {_text(m) for m in members}

    # -- leases: who follows which request ----------------------------------------------

    async def renew_lease(self, owner: str, ttl_s: float) -> None:
        """Say this process is alive for ``ttl_s`` more seconds."""
        now_ms = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(f"{self.prefix}:owner:{owner}", "1", px=int(ttl_s * 1000))
        pipe.zadd(f"{self.prefix}:owners", {owner: now_ms})
        await pipe.execute()

    async def drop_lease(self, owner: str) -> None:
        """Give up our requests now (graceful stop): others take them over at once."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(f"{self.prefix}:owner:{owner}")
        pipe.zadd(f"{self.prefix}:owners", {owner: 0})  # dead at once: adopt now
        await pipe.execute()

    async def adopt_orphans(
        self, owner: str, routes: list[str], limit: int, *, lease_ttl_s: float, full: bool = False
    ) -> list[str]:
        """Take over (atomically) requests whose owner's lease expired; returns their ids.
        Cheap unless some owner missed its renewals, or ``full``: then every in-flight
        request is looked at, and ours are returned too (the caller resumes those it does
        not follow: a safety net for a request this process lost track of). Those come
        back marked with a leading ``=``."""
        args: list[Any] = [self.prefix, owner, limit, int(lease_ttl_s * 1000), "1" if full else "0"]
        found = await self._orphans(args=[*args, *routes])
        return [_text(i) for i in found]

    async def reopen(self, request_id: str) -> bool:
        """Ambiguous submit resumed under ``at_least_once``: allow one more submit."""
        return bool(await self._reopen(keys=[self.key(request_id)]))

    async def count(self, name: str) -> None:
        await self.redis.incr(f"{self.prefix}:stats:{name}")

    async def wake(self, request_id: str) -> None:
        await self.redis.publish(self.wake_channel, request_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
