"""Lua scripts called with named keys and arguments.

Redis passes a script positional ``KEYS[i]`` and ``ARGV[i]``; a :class:`NamedScript`
declares their names once, binds them to Lua locals of the same names, and is called
with keyword arguments, so a caller cannot swap two of them unnoticed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from redis.client import Redis as SyncRedis


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

    def bind(self, redis: AsyncRedis | SyncRedis) -> BoundScript:
        """Register on ``redis`` (sync or asyncio client)."""
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


def text(value: Any) -> str:
    """A Redis reply as text (redis-py returns bytes unless told otherwise)."""
    return value.decode() if isinstance(value, bytes) else str(value)
