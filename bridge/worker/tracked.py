"""What the tracker keeps per request and per route."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge.runpod import AsyncioEndpoint, AsyncioJob, PollPolicy
from bridge.settings import RouteConfig
from bridge.worker.model import Request


class NotOurs(Exception):
    """The ledger says another process submits (or submitted) this request."""


@dataclass
class Tracked:
    """One request this process is following."""

    request: Request
    job: AsyncioJob | None = None
    _waiter: asyncio.Future[None] | None = None
    cancel_asked: bool = False
    purge_seen: bool = False
    last_state: str | None = None
    task: asyncio.Task[None] | None = None

    def wake_up(self) -> None:
        """Interrupt the current wait (a cancel, a webhook, a purge)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def arm(self) -> asyncio.Future[None]:
        """A fresh future for :meth:`wake_up` to resolve (a future, not a task per
        request: 10,000 jobs in flight should not cost 10,000 more tasks)."""
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def wants_cancel(self) -> bool:
        """Read through a method: other coroutines set the flag while we wait."""
        return self.cancel_asked


class RouteRuntime:
    """A route's clients and its in-flight cap."""

    def __init__(self, name: str, config: RouteConfig, session: aiohttp.ClientSession):
        self.name = name
        self.config = config
        key = config.api_key().get_secret_value()
        common: dict[str, Any] = {"api_key": key, "base_url": config.base_url}
        self.held = AsyncioEndpoint(config.endpoint_id, session, **common)
        self.plain = AsyncioEndpoint(
            config.endpoint_id, session, poll=PollPolicy(long_poll=False, cap=5.0), **common
        )
        self.safety = AsyncioEndpoint(
            config.endpoint_id,
            session,
            poll=PollPolicy(long_poll=False, first=config.webhook_safety_poll_s, factor=1.0,
                            cap=config.webhook_safety_poll_s),
            **common,
        )  # fmt: skip
        self.slots = asyncio.Semaphore(config.max_in_flight)
        self.in_flight = 0
        self.waiting = 0

    def endpoint_for(self, mode: str) -> AsyncioEndpoint:
        if mode == "webhook":
            return self.safety
        return self.held if self.in_flight < self.config.long_poll_below else self.plain
