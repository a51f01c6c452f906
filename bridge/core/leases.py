"""Leases: which worker process follows which request, and who takes over from the dead.

Each worker renews ``Keys.owner(name)`` (a key with a TTL) and its score in
``Keys.owners``. A request's ``owner`` field names its follower; when that owner's
lease is gone, another worker adopts the request atomically (one Lua call) and resumes it
from its ledger record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bridge.core.keys import OWNERS_TTL_S, Keys
from bridge.core.scripts import NamedScript, text

# Unless ``full`` is '1', the in-flight sets are only walked when a registered owner
# missed its renewals, so a healthy fleet pays one ZRANGEBYSCORE per call. Keys are built
# here from the prefix: the ledger runs on one Redis (or a Sentinel group), not a cluster.
ADOPT = NamedScript(
    """
local limit, lease_ms = tonumber(limit), tonumber(lease_ms)
local owners = prefix .. ':owners'
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = {}
for _, o in ipairs(redis.call('ZRANGEBYSCORE', owners, '-inf', now_ms - lease_ms)) do
  if redis.call('EXISTS', prefix .. ':owner:' .. o) == 0 then
    table.insert(dead, o)
  end
end
local adopted, own = {}, {}
if #dead == 0 and full ~= '1' then
  return {adopted, own}
end
for route in string.gmatch(routes, '[^\\n]+') do
  if full == '1' then  -- a slot whose request is no longer submitting/submitted is free
    local slots = prefix .. ':slots:' .. route
    for _, id in ipairs(redis.call('HKEYS', slots)) do
      local state = redis.call('HGET', prefix .. ':req:' .. id, 'state')
      if state ~= 'submitting' and state ~= 'submitted' then
        redis.call('HDEL', slots, id)
      end
    end
  end
  local set = prefix .. ':inflight:' .. route
  for _, id in ipairs(redis.call('SMEMBERS', set)) do
    local key = prefix .. ':req:' .. id
    local state = redis.call('HGET', key, 'state')
    local owner = redis.call('HGET', key, 'owner')
    if (not state) or state == 'final' then
      redis.call('SREM', set, id)
    elseif owner == me then
      if full == '1' then
        table.insert(own, id)
      end
    elseif redis.call('EXISTS', prefix .. ':owner:' .. (owner or '')) == 0 then
      redis.call('HSET', key, 'owner', me)
      table.insert(adopted, id)
      if #adopted >= limit then
        return {adopted, own}
      end
    end
  end
end
for _, o in ipairs(dead) do
  redis.call('ZREM', owners, o)  -- nothing of theirs is left to adopt
end
return {adopted, own}
""",
    args=("prefix", "me", "limit", "lease_ms", "full", "routes"),
)


@dataclass(frozen=True, slots=True)
class Found:
    """What :meth:`Leases.adopt` found: requests taken over from dead owners, and (on a
    full look) the in-flight requests this process owns already."""

    adopted: list[str] = field(default_factory=list)
    own: list[str] = field(default_factory=list)


class Leases:
    """This process' lease and the adoption of orphaned requests."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        owner: str,
        *,
        ttl_s: float,
        routes: Sequence[str] = (),
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = owner
        self.ttl_s = ttl_s
        self.routes = list(routes)
        self._adopt = ADOPT.bind(redis)

    async def renew(self) -> None:
        """Say this process is alive for ``ttl_s`` more seconds."""
        now_ms = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.owner(self.owner), "1", px=int(self.ttl_s * 1000))
        pipe.zadd(self.keys.owners, {self.owner: now_ms})
        pipe.expire(self.keys.owners, OWNERS_TTL_S)
        if self.routes:  # the routes we serve: a door that cannot serve one hands it here
            pipe.hset(self.keys.serving, mapping=dict.fromkeys(self.routes, time.time()))
            pipe.expire(self.keys.serving, OWNERS_TTL_S)
        await pipe.execute()

    async def drop(self) -> None:
        """Give up our requests now (graceful stop): others take them over at once."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.owner(self.owner))
        pipe.zadd(self.keys.owners, {self.owner: 0})  # dead at once: adopt now
        await pipe.execute()

    async def adopt(self, routes: list[str], limit: int, *, full: bool = False) -> Found:
        """Take over (atomically) requests whose owner's lease expired. Cheap unless some
        owner missed its renewals, or ``full``: then every in-flight request is looked
        at, and ours are returned too (the caller resumes those it does not follow: a
        safety net for a request this process lost track of)."""
        adopted, own = await self._adopt(
            prefix=self.keys.prefix,
            me=self.owner,
            limit=limit,
            lease_ms=int(self.ttl_s * 1000),
            full="1" if full else "0",
            routes="\n".join(routes),
        )
        return Found([text(i) for i in adopted], [text(i) for i in own])
