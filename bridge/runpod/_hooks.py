"""Hooks: callables the drivers call around every request they send.

A hook sees the typed wire request (its operation, endpoint and job), never a URL to
parse, and after the exchange its response or transport error. ``before`` hooks may
wait (a rate budget); ``after`` hooks count (metrics). The asyncio driver awaits a hook
that returns an awaitable; the blocking driver refuses one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.errors import TransportError
from bridge.runpod import _protocol as wire


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request sent and what came of it.

    Attributes:
        request: what was sent (``op``, ``endpoint_id``, ``job_id`` …).
        response: the reply, when one came (any status).
        error: the transport error, when none came.
        seconds: how long the exchange took.
    """

    request: wire.Request
    response: wire.Response | None = None
    error: TransportError | None = None
    seconds: float = 0.0

    @property
    def result(self) -> str:
        """The status code, or the transport error's class name."""
        if self.response is not None:
            return str(self.response.status_code)
        return type(self.error).__name__


Before = Callable[[wire.Request], Any]
After = Callable[[Exchange], Any]


@dataclass(frozen=True, slots=True)
class Hooks:
    """Callables run around each request: ``before(request)`` and ``after(exchange)``.

    Example::

        async def wait_for_budget(request): await budgets.acquire(request.endpoint_id,
                                                                   request.op)
        AsyncioEndpoint("sdxl", session, hooks=Hooks(before=(wait_for_budget,)))
    """

    before: tuple[Before, ...] = ()
    after: tuple[After, ...] = ()

    def __add__(self, other: Hooks) -> Hooks:
        return Hooks(self.before + other.before, self.after + other.after)

    async def before_async(self, request: wire.Request) -> None:
        for hook in self.before:
            result = hook(request)
            if inspect.isawaitable(result):
                await result

    async def after_async(self, exchange: Exchange) -> None:
        for hook in self.after:
            result = hook(exchange)
            if inspect.isawaitable(result):
                await result

    def before_sync(self, request: wire.Request) -> None:
        for hook in self.before:
            _refuse_awaitable(hook(request), hook)

    def after_sync(self, exchange: Exchange) -> None:
        for hook in self.after:
            _refuse_awaitable(hook(exchange), hook)


NO_HOOKS = Hooks()


def _refuse_awaitable(result: Any, hook: Callable[..., Any]) -> None:
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise TypeError(f"hook {hook!r} returned an awaitable: the blocking client cannot wait")
