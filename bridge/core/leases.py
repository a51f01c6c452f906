"""Leases: which worker process follows which request, and who takes over from the dead.

Each worker renews ``Keys.owner(name)`` (a key with a TTL) and its score in
``Keys.owners`` (Redis' own clock), and holds one dedicated connection named
``Keys.presence(name)`` (CLIENT SETNAME). A request's ``owner`` field names its follower;
another worker adopts it atomically (one Lua call) and resumes it from its ledger record
once that owner is dead:

- no presence connection, and its lease gone or (a lease that says it holds one) not
  renewed for ``adopt_after_s``: a SIGKILLed process' socket is closed by the kernel, so
  Redis drops its name at once and it is adopted within seconds;
- or still connected but silent for ``hung_s``: hung. A process that is stopped or
  starved of CPU (its renewals late) keeps its connection, so it is not adopted early.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bridge.core.connection import async_redis
from bridge.core.keys import OWNERS_TTL_S, Keys
from bridge.core.scripts import NamedScript, text

PRESENCE = "presence"
"""A lease's value when its worker holds a presence connection."""

RENEW = NamedScript(
    """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', lease, value, 'PX', ttl_ms)
redis.call('ZADD', owners, now_ms, me)
redis.call('EXPIRE', owners, owners_ttl)
return now_ms
""",
    keys=("lease", "owners"),
    args=("value", "ttl_ms", "me", "owners_ttl"),
)
"""A renewal, timed by Redis' clock (the one :data:`ADOPT` reads): a worker host's clock
that runs behind or ahead cannot make its lease look old or young."""

# Unless ``full`` is '1', the in-flight sets are only walked when a registered owner
# is dead, so a healthy fleet pays one ZRANGEBYSCORE per call. Keys are built here from
# the prefix: the ledger runs on one Redis (or a Sentinel group), not a cluster.
ADOPT = NamedScript(
    """
local limit, adopt_ms, hung_ms = tonumber(limit), tonumber(adopt_ms), tonumber(hung_ms)
local owners = prefix .. ':owners'
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local here = {}
for name in string.gmatch(present, '[^\\n]+') do
  here[name] = true
end
local verdicts = {}
local function is_dead(o)
  if verdicts[o] ~= nil then
    return verdicts[o]
  end
  local score = redis.call('ZSCORE', owners, o)
  local age = score and (now_ms - tonumber(score)) or nil
  local lease = redis.call('GET', prefix .. ':owner:' .. o)
  local dead
  if here[o] then
    dead = age ~= nil and age > hung_ms  -- connected, yet silent this long: hung
  elseif not lease then
    dead = true
  elseif lease == presence_value then
    dead = age == nil or age > adopt_ms
  else
    dead = false  -- a worker without a presence connection: its lease decides
  end
  verdicts[o] = dead
  return dead
end
local late = redis.call('ZRANGEBYSCORE', owners, '-inf', now_ms - adopt_ms)
if #late > 0 and known ~= '1' then
  return {{}, {}, {}, 1}  -- someone is late: judging them needs who is present
end
local dead, suspects = {}, {}
for _, o in ipairs(late) do
  if is_dead(o) then
    table.insert(dead, o)
  elseif here[o] then
    table.insert(suspects, o)  -- late renewals, still connected: stopped or starved
  end
end
local adopted, own = {}, {}
if #dead == 0 and full ~= '1' then
  return {adopted, own, suspects, 0}
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
    elseif is_dead(owner or '') then
      redis.call('HSET', key, 'owner', me)
      table.insert(adopted, id)
      if #adopted >= limit then
        return {adopted, own, suspects, 0}
      end
    end
  end
end
for _, o in ipairs(dead) do
  redis.call('ZREM', owners, o)  -- nothing of theirs is left to adopt
end
return {adopted, own, suspects, 0}
""",
    args=("prefix", "me", "limit", "adopt_ms", "hung_ms", "known", "present",
          "presence_value", "full", "routes"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Found:
    """What :meth:`Leases.adopt` found."""

    adopted: list[str] = field(default_factory=list)
    """Requests taken over from dead owners."""
    own: list[str] = field(default_factory=list)
    """On a full look: the in-flight requests this process owns already."""
    suspects: list[str] = field(default_factory=list)
    """Owners late with their renewals but still connected (stopped, starved, hung):
    not adopted from until they are gone or silent for ``hung_s``."""


class Leases:
    """This process' lease, its presence connection, and the adoption of orphans.

    Args:
        redis: the shared client.
        keys: the key schema.
        owner: this process' name.
        ttl_s: the lease's lifetime.
        routes: the routes this process serves (written to ``Keys.serving``).
        presence: this process' dedicated connection, named ``Keys.presence(owner)``
            (see :func:`presence_client`); None: the lease alone says it is alive.
        adopt_after_s: an owner without a presence connection is dead once its lease
            was not renewed for this long.
        hung_s: an owner still connected is dead once silent this long.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        owner: str,
        *,
        ttl_s: float,
        routes: Sequence[str] = (),
        presence: Redis | None = None,
        adopt_after_s: float = 3.0,
        hung_s: float = 60.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = owner
        self.ttl_s = ttl_s
        self.routes = list(routes)
        self.presence = presence
        self.adopt_after_s = adopt_after_s
        self.hung_s = hung_s
        self._adopt = ADOPT.bind(redis)
        self._renew = RENEW.bind(redis)

    async def renew(self) -> None:
        """Say this process is alive for ``ttl_s`` more seconds (and reconnect its
        presence connection if Redis dropped it)."""
        if self.presence is not None:
            await self.presence.ping()
        await self._renew(
            lease=self.keys.owner(self.owner),
            owners=self.keys.owners,
            value=PRESENCE if self.presence is not None else "1",
            ttl_ms=int(self.ttl_s * 1000),
            me=self.owner,
            owners_ttl=OWNERS_TTL_S,
        )
        if self.routes:  # the routes we serve: a door that cannot serve one hands it here
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self.keys.serving, mapping=dict.fromkeys(self.routes, time.time()))
            pipe.expire(self.keys.serving, OWNERS_TTL_S)
            await pipe.execute()

    async def drop(self) -> None:
        """Give up our requests now (graceful stop): others take them over at once."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.owner(self.owner))
        pipe.zadd(self.keys.owners, {self.owner: 0})  # dead at once: adopt now
        await pipe.execute()

    async def close(self) -> None:
        """Close the presence connection (after :meth:`drop`, on a clean stop)."""
        if self.presence is not None:
            await self.presence.aclose()

    async def present(self) -> list[str]:
        """The workers that hold a presence connection now (Redis' own view)."""
        prefix = self.keys.presence_prefix
        names = (text(c.get("name") or "") for c in await self.redis.client_list())
        return [name[len(prefix) :] for name in names if name.startswith(prefix)]

    async def adopt(self, routes: list[str], limit: int, *, full: bool = False) -> Found:
        """Take over (atomically) the requests of dead owners (see the module docstring).
        Cheap unless some owner is dead, or ``full``: then every in-flight request is
        looked at, and ours are returned too (the caller resumes those it does not
        follow: a safety net for a request this process lost track of)."""
        # CLIENT LIST costs Redis time per connection: it is read only when some owner
        # is late (the script says so) or for a full look, right before the judgement.
        present = await self.present() if full else None
        while True:
            adopted, own, suspects, needs_presence = await self._adopt(
                prefix=self.keys.prefix,
                me=self.owner,
                limit=limit,
                adopt_ms=int(self.adopt_after_s * 1000),
                hung_ms=int(self.hung_s * 1000),
                known="0" if present is None else "1",
                present="\n".join(present or ()),
                presence_value=PRESENCE,
                full="1" if full else "0",
                routes="\n".join(routes),
            )
            if not needs_presence or present is not None:
                break
            present = await self.present()
        return Found(
            [text(i) for i in adopted], [text(i) for i in own], [text(o) for o in suspects]
        )


def presence_client(url: str, keys: Keys, owner: str, master_name: str | None = None) -> Redis:
    """A worker's presence connection: one connection of its own, named
    ``Keys.presence(owner)``, with TCP keepalive (a dead peer's socket is noticed); on a
    Sentinel URL it follows the primary like every other client."""
    pooled = async_redis(url, master_name, client_name=keys.presence(owner), socket_keepalive=True)
    client = Redis(connection_pool=pooled.connection_pool, single_connection_client=True)
    client.auto_close_connection_pool = True  # closing it closes the named connection
    return client
