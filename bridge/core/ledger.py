"""The request ledger in Redis: every accepted request, its job id, and its one final reply.

A request's record is the hash ``Keys.request(id)`` (see :mod:`bridge.core.keys`):

- ``state``: ``accepted`` → ``submitting`` → ``submitted`` → ``final``
  (:class:`~bridge.core.lifecycle.Phase`); ``tombstone`` for a cancel that came first;
- ``route``, ``request`` (the request as JSON, without its arrival time), ``created``,
  ``reply_to``;
- ``job_id``; ``cancel`` (1 once a cancel was asked); ``owner`` (the worker following it);
- ``submissions`` (POSTs of ``/run`` that may have created a job); ``chunks`` (stream
  chunks pushed); ``token`` (the webhook secret); ``final`` (the final reply as JSON),
  ``finisher`` (who wrote it) and ``delivered`` (what became of the reply).

Every state change that must happen once is one Lua script, so two processes racing
to finish a request cannot both deliver a final reply.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bridge.core.keys import PENDING_TTL_S, TOMBSTONE_TTL_S, Keys
from bridge.core.model import Request
from bridge.core.scripts import NamedScript, text

# A route's fleet-wide max_in_flight: one slot per request from ``submitting`` until
# final, in the hash Keys.slots(route) (id → owner); a cap of 0 takes no slot.
TAKE_SLOT = """
local function take_slot(slots, id, owner, cap)
  cap = tonumber(cap)
  if cap <= 0 then
    return true
  end
  if redis.call('HLEN', slots) < cap then
    redis.call('HSET', slots, id, owner)  -- its own slot already: the same count
    return true
  end
  return redis.call('HEXISTS', slots, id) == 1  -- all taken: is one of them its own?
end
"""

NO_SLOT = "no_slot"
""":data:`SUBMITTING`'s answer when the route's fleet-wide ``max_in_flight`` is reached."""

CLAIM = NamedScript(
    TAKE_SLOT
    + """
local state = redis.call('HGET', req, 'state')
if state and state ~= 'tombstone' then
  local same = redis.call('HGET', req, 'request') == request
  return {same and 'same' or 'conflict', state, redis.call('HGET', req, 'cancel') or '0',
          redis.call('HGET', req, 'reply_to') or ''}
end
if task_id ~= '' and task_id ~= id then
  redis.call('SET', alias, id, 'EX', ttl)
  if redis.call('HGET', task_req, 'cancel') == '1' then
    state = 'tombstone'  -- revoked under its task id before it arrived
  end
end
local phase, cancel, submissions = 'accepted', '0', 0
if state == 'tombstone' then
  cancel = '1'
elseif grant == '1' and take_slot(slots, id, owner, cap) then
  -- the claimer sends it now: the first submission's grant (and its slot) too
  phase, submissions = 'submitting', 1
end
redis.call('HSET', req, 'state', phase, 'route', route, 'request', request,
           'created', created, 'owner', owner, 'token', token, 'reply_to', reply_to,
           'submissions', submissions)
if cancel == '1' then
  redis.call('HSET', req, 'cancel', '1')
end
redis.call('EXPIRE', req, ttl)
redis.call('SADD', inflight, id)
return {'new', phase, cancel, reply_to}
""",
    keys=("req", "inflight", "alias", "task_req", "slots"),
    args=(
        "route",
        "request",
        "created",
        "owner",
        "ttl",
        "id",
        "task_id",
        "token",
        "reply_to",
        "grant",
        "cap",
    ),
)

SUBMITTING = NamedScript(
    TAKE_SLOT
    + """
local state = redis.call('HGET', req, 'state')
local cancel = redis.call('HGET', req, 'cancel') or '0'
if state == 'accepted' then
  if not take_slot(slots, id, owner, cap) then
    return {'no_slot', cancel, tonumber(redis.call('HGET', req, 'submissions') or '0')}
  end
  redis.call('HSET', req, 'state', 'submitting', 'owner', owner)
  return {'ok', cancel, redis.call('HINCRBY', req, 'submissions', 1)}
end
return {state or 'missing', cancel, tonumber(redis.call('HGET', req, 'submissions') or '0')}
""",
    keys=("req", "slots"),
    args=("owner", "id", "cap"),
)

SUBMISSIONS = NamedScript(
    """
if redis.call('EXISTS', req) == 0 then
  return 0
end
return redis.call('HINCRBY', req, 'submissions', delta)
""",
    keys=("req",),
    args=("delta",),
)

SUBMITTED = NamedScript(
    """
local found = redis.call('HMGET', req, 'state', 'cancel')
local state, cancel = found[1], found[2] or '0'
if state == 'submitting' or state == 'accepted' then
  redis.call('HSET', req, 'state', 'submitted', 'job_id', job_id)
  return {'ok', cancel}
end
return {state or 'missing', cancel}
""",
    keys=("req",),
    args=("job_id",),
)

# The reply target is checked first: a key that exists and is not a list (a stream, a
# hash someone else owns) gets no write and no EXPIRE; the request is finalized anyway.
FINALIZE = NamedScript(
    """
local state = redis.call('HGET', req, 'state')
if state == 'final' then
  -- the same finisher asking again (its first answer was lost): the same answer
  if redis.call('HGET', req, 'finisher') == finisher then
    return tonumber(redis.call('HGET', req, 'delivered'))
  end
  return 0
end
redis.call('HDEL', slots, id)  -- the route's slot is free again
if not state or state == 'tombstone' then
  return 0
end
local code = 3
if reply_to ~= '' then
  -- a key that is not a list answers WRONGTYPE and is left as it was
  if type(redis.pcall('RPUSH', reply_to, reply)) == 'table' then
    code = 2
  else
    code = 1
    redis.call('EXPIRE', reply_to, reply_ttl)
  end
end
redis.call('HSET', req, 'state', 'final', 'final', reply, 'finisher', finisher,
           'delivered', code)
redis.call('EXPIRE', req, result_ttl)
redis.call('SREM', inflight, id)
return code
""",
    keys=("req", "inflight", "reply_to", "slots"),
    args=("reply", "result_ttl", "reply_ttl", "id", "finisher"),
)

CHUNK = NamedScript(
    """
local state = redis.call('HGET', req, 'state')
if state == 'final' or not state then
  return -1
end
local kind = redis.call('TYPE', reply_to)['ok']
if kind ~= 'list' and kind ~= 'none' then
  return -2
end
local seq = redis.call('HINCRBY', req, 'chunks', 1) - 1
redis.call('RPUSH', reply_to, head .. seq .. tail)
redis.call('EXPIRE', reply_to, ttl)
return seq
""",
    keys=("req", "reply_to"),
    args=("head", "tail", "ttl"),
)

PUSH_REPLY = NamedScript(
    """
local kind = redis.call('TYPE', reply_to)['ok']
if kind ~= 'list' and kind ~= 'none' then
  return 0
end
redis.call('RPUSH', reply_to, reply)
redis.call('EXPIRE', reply_to, ttl)
return 1
""",
    keys=("reply_to",),
    args=("reply", "ttl"),
)

REOPEN = NamedScript(
    """
if redis.call('HGET', req, 'state') == 'submitting' then
  redis.call('HSET', req, 'state', 'accepted')
  redis.call('HDEL', slots, id)  -- the next submission takes a slot again
  return 1
end
return 0
""",
    keys=("req", "slots"),
    args=("id",),
)

CANCEL = NamedScript(
    """
local key = req
local alias_id = redis.call('GET', alias)
if alias_id then
  key = req_prefix .. alias_id
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
  redis.call('EXPIRE', key, tombstone_ttl)
  return 'unknown'
end
redis.call('HSET', key, 'cancel', '1')
redis.call('PUBLISH', channel, alias_id or id)
return state
""",
    keys=("req", "alias"),
    args=("channel", "tombstone_ttl", "id", "req_prefix"),
)


RELEASE_FOR_REPLAY = NamedScript(
    """
if redis.call('EXISTS', req) == 0 then
  return {'gone', ''}
end
local state, holder = redis.call('HGET', req, 'state'), redis.call('HGET', req, 'finisher')
if state ~= 'final' or holder ~= finisher then
  return {'taken', ''}
end
local request = redis.call('HGET', req, 'request') or ''
redis.call('DEL', req)
return {'released', request}
""",
    keys=("req",),
    args=("finisher",),
)
"""``bridge dlq replay``: forget a dead-lettered request's final record, only while it
still holds the very reply its dead letter names (its ``finisher``); answers the state
and the request as recorded."""


class ClaimKind(enum.Enum):
    NEW = "new"
    """First time this id is seen: recorded, ours to follow."""
    SAME = "same"
    """The same request again (a redelivery): nothing to do."""
    CONFLICT = "conflict"
    """The id is taken by a different request."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to :meth:`Ledger.claim`."""

    kind: ClaimKind
    state: str
    cancel_requested: bool
    reply_to: str
    """The reply list of the request that holds the id ('' when none)."""

    @property
    def new(self) -> bool:
        return self.kind is ClaimKind.NEW


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to :meth:`Ledger.mark_submitting`: ``granted`` when this process may
    POST ``/run`` now; else ``state`` says who has it."""

    granted: bool
    state: str
    cancel_requested: bool
    submissions: int

    @property
    def no_slot(self) -> bool:
        """Not granted because the route's fleet-wide ``max_in_flight`` is reached (the
        request is still ``accepted``: ask again once a slot is free)."""
        return self.state == NO_SLOT


@dataclass(frozen=True, slots=True)
class Marked:
    """The answer to :meth:`Ledger.mark_submitted`."""

    recorded: bool
    state: str
    cancel_requested: bool


class Delivery(enum.Enum):
    """What :meth:`Ledger.finalize` did."""

    LOST = 0
    """Another process (or an earlier call) finished the request: nothing written."""
    REPLIED = 1
    """Finalized, and the reply pushed to its list."""
    REFUSED_TARGET = 2
    """Finalized; the reply target exists and is not a list: nothing written to it."""
    NO_TARGET = 3
    """Finalized; the request has no reply list."""

    @property
    def won(self) -> bool:
        return self is not Delivery.LOST


@dataclass(frozen=True, slots=True)
class Record:
    """A request's record as stored (see the module docstring)."""

    state: str | None
    route: str = ""
    request: str | None = None
    job_id: str | None = None
    cancel: bool = False
    owner: str | None = None
    submissions: int = 0
    token: str = ""
    created: float = 0.0
    final: str | None = None

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> Record:
        f = {text(k): text(v) for k, v in raw.items()}
        return cls(
            state=f.get("state"),
            route=f.get("route", ""),
            request=f.get("request"),
            job_id=f.get("job_id") or None,
            cancel=f.get("cancel") == "1",
            owner=f.get("owner"),
            submissions=int(f.get("submissions") or 0),
            token=f.get("token", ""),
            created=float(f.get("created") or 0),
            final=f.get("final"),
        )

    def to_request(self) -> Request:
        """The request this record holds (raises ValueError when it holds none)."""
        if not self.request:
            raise ValueError("the record holds no request")
        request = Request.from_record(json.loads(self.request))
        request.accepted_at = self.created or request.accepted_at
        return request


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def request_json(request: Request) -> str:
    """The request as the ledger stores it: without its arrival time, so the same request
    delivered twice compares equal."""
    record = request.to_record()
    record.pop("accepted_at", None)
    return _dumps(record)


class Ledger:
    """Request records in Redis (see the module docstring)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._claim = CLAIM.bind(redis)
        self._submitting = SUBMITTING.bind(redis)
        self._submissions = SUBMISSIONS.bind(redis)
        self._submitted = SUBMITTED.bind(redis)
        self._finalize = FINALIZE.bind(redis)
        self._chunk = CHUNK.bind(redis)
        self._cancel = CANCEL.bind(redis)
        self._reopen = REOPEN.bind(redis)
        self._push_reply = PUSH_REPLY.bind(redis)

    async def claim(
        self,
        request: Request,
        owner: str,
        *,
        token: str = "",
        grant: bool = False,
        cap: int = 0,
    ) -> Claim:
        """Record a request before anything is sent. A known id is ``SAME`` (the same
        request again) or ``CONFLICT``; a Celery task id that differs from the request
        id is kept as an alias (for revoke). With ``grant`` a new request (not cancelled)
        is recorded ``submitting`` at once: one script instead of two when its route has
        a free slot here and, with a ``cap``, one of the route's fleet-wide slots
        (:attr:`Claim.state` says which)."""
        task_id = request.task_id or ""
        k = self.keys
        kind, state, cancel, reply_to = await self._claim(
            req=k.request(request.id),
            inflight=k.inflight(request.route),
            alias=k.task(task_id),
            task_req=k.request(task_id),
            route=request.route,
            request=request_json(request),
            created=f"{request.accepted_at:.3f}",
            owner=owner,
            ttl=PENDING_TTL_S,
            id=request.id,
            task_id=task_id,
            token=token,
            reply_to=request.reply_to or "",
            grant="1" if grant else "0",
            slots=k.slots(request.route),
            cap=cap,
        )
        return Claim(ClaimKind(text(kind)), text(state), text(cancel) == "1", text(reply_to))

    async def mark_submitting(
        self, request_id: str, owner: str, *, route: str = "", cap: int = 0
    ) -> Grant:
        """Take the one right to POST ``/run`` now (counted in ``submissions``), and with
        a ``cap`` one of ``route``'s fleet-wide slots: none free is :attr:`Grant.no_slot`."""
        state, cancel, submissions = await self._submitting(
            req=self.keys.request(request_id),
            slots=self.keys.slots(route),
            owner=owner,
            id=request_id,
            cap=cap,
        )
        state = text(state)
        return Grant(state == "ok", state, text(cancel) == "1", int(submissions))

    async def count_submission(self, request_id: str, delta: int) -> int:
        """Add ``delta`` to ``submissions`` (another POST, or one proven not to count)."""
        return int(await self._submissions(req=self.keys.request(request_id), delta=delta))

    async def mark_submitted(self, request_id: str, job_id: str) -> Marked:
        """Record the endpoint's job id."""
        state, cancel = await self._submitted(req=self.keys.request(request_id), job_id=job_id)
        state = text(state)
        return Marked(state == "ok", state, text(cancel) == "1")

    async def reopen(self, request_id: str, route: str) -> bool:
        """An ambiguous submit resumed under ``at_least_once``, or a submission handed
        back unsent: allow one more submit (the route's slot is freed meanwhile)."""
        k = self.keys
        return bool(
            await self._reopen(req=k.request(request_id), slots=k.slots(route), id=request_id)
        )

    async def finalize(
        self,
        request: Request,
        reply: dict[str, Any],
        *,
        reply_ttl_s: int,
        result_ttl_s: int,
        finisher: str,
        write_reply: bool = True,
    ) -> Delivery:
        """Store the final reply and push it to the request's reply list, once. The same
        ``finisher`` asking again (its first answer lost) gets the same answer."""
        k = self.keys
        result = await self._finalize(
            req=k.request(request.id),
            inflight=k.inflight(request.route),
            reply_to=(request.reply_to or "") if write_reply else "",
            reply=_dumps(reply),
            result_ttl=result_ttl_s,
            reply_ttl=reply_ttl_s,
            id=request.id,
            finisher=finisher,
            slots=k.slots(request.route),
        )
        return Delivery(int(result))

    async def push_chunk(self, request: Request, output: Any, ttl_s: int) -> int:
        """Push a stream chunk ``{"type": "chunk", "id", "seq", "output"}``: its ``seq``
        (counted in the ledger, so it stays in order when another process resumes the
        stream), -1 once the request is final, -2 when the target is not a list."""
        assert request.reply_to is not None
        head = _dumps({"type": "chunk", "id": request.id})
        return int(
            await self._chunk(
                req=self.keys.request(request.id),
                reply_to=request.reply_to,
                head=head[:-1] + ',"seq":',
                tail=',"output":' + _dumps(output) + "}",
                ttl=ttl_s,
            )
        )

    async def push_reply(self, reply_to: str, reply: dict[str, Any], ttl_s: int) -> bool:
        """Push a reply for a request that was never accepted (a refusal): False, and
        nothing written, when the target exists and is not a list."""
        return bool(await self._push_reply(reply_to=reply_to, reply=_dumps(reply), ttl=ttl_s))

    async def request_cancel(self, request_id: str) -> str:
        """Ask for a cancel (by request id or Celery task id). Returns the request's
        state: ``unknown`` (a tombstone is left so the request is cancelled if it
        arrives later), ``final``, or the live state (trackers are told)."""
        return text(await self._cancel(**cancel_arguments(self.keys, request_id)))

    async def get(self, request_id: str) -> Record:
        return Record.from_hash(await self.redis.hgetall(self.keys.request(request_id)))

    async def token(self, request_id: str) -> str:
        """The webhook token of a request ('' when none): one small read."""
        raw = await self.redis.hget(self.keys.request(request_id), "token")
        return text(raw) if raw else ""

    async def final_reply(self, request_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.keys.request(request_id), "final")
        return json.loads(raw) if raw else None

    async def inflight(self, route: str) -> set[str]:
        return {text(m) for m in await self.redis.smembers(self.keys.inflight(route))}

    async def count(self, name: str) -> None:
        await self.redis.incr(self.keys.stat(name))


def cancel_arguments(keys: Keys, request_id: str) -> dict[str, Any]:
    """The :data:`CANCEL` script's arguments, for the sync callers (revoke, CLI)."""
    return {
        "req": keys.request(request_id),
        "alias": keys.task(request_id),
        "channel": keys.cancel_channel,
        "tombstone_ttl": TOMBSTONE_TTL_S,
        "id": request_id,
        "req_prefix": keys.request_prefix,
    }


def cancel_sync(redis: Any, keys: Keys, request_id: str) -> str:
    """:meth:`Ledger.request_cancel` for a blocking client (revoke, ``bridge cancel``)."""
    return text(CANCEL.bind(redis)(**cancel_arguments(keys, request_id)))
