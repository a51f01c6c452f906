"""Leases and recovery: this process says it is alive, and takes over the requests of
processes that are not (a killed worker's in-flight requests are resumed from their
ledger records by a survivor, or by a restarted worker)."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from bridge.core.leases import Leases
from bridge.worker.tracker import Tracker

log = logging.getLogger("bridge.recovery")


class Recovery:
    """Keeps this process' lease and adopts orphaned requests.

    Args:
        leases: this process' lease in Redis.
        tracker: resumes what is adopted.
        routes: the routes this process serves (only their requests are adopted).
        every_s: how often the lease is renewed and orphans looked for.
        full_every_s: how often every in-flight request is looked at (a safety net for
            one this process lost track of; at start-up first).
    """

    def __init__(
        self,
        leases: Leases,
        tracker: Tracker,
        routes: list[str],
        *,
        every_s: float,
        full_every_s: float,
    ) -> None:
        self.leases = leases
        self.tracker = tracker
        self.routes = routes
        self.every_s = every_s
        self.full_every_s = full_every_s
        self.renewed_at = 0.0
        """When the lease was last renewed (monotonic clock): the worker's health."""
        self.suspects: set[str] = set()
        """Workers late with their renewals but still connected (not adopted from)."""

    async def recover(self, limit: int = 1000, *, full: bool = False) -> int:
        """Adopt requests whose worker's lease expired and follow them here (``full``:
        look at every in-flight request, not only when an owner went silent)."""
        found = await self.leases.adopt(self.routes, limit, full=full)
        suspects = set(found.suspects)
        for owner in suspects - self.suspects:
            log.warning("worker %s is late renewing its lease but still connected: "
                        "not adopting its requests (stopped or starved?)", owner)  # fmt: skip
        self.suspects = suspects
        resumed = 0
        for request_id in found.adopted:
            resumed += await self.tracker.resume(request_id)
        for request_id in found.own:
            resumed += await self.tracker.resume(request_id, own=True)
        if resumed:
            log.info("resumed %d request(s) no live process was following", resumed)
        return resumed

    async def run(self) -> None:
        """Renew the lease and adopt orphans, forever; Redis outages are waited out."""
        next_full = 0.0
        while True:
            try:
                await self.leases.renew()
                self.renewed_at = time.monotonic()
                full = time.monotonic() >= next_full
                await self.recover(full=full)
                if full:
                    next_full = time.monotonic() + self.full_every_s
            except (RedisError, OSError) as exc:
                log.warning("lease renewal / recovery failed (%s); retrying", exc)
            await asyncio.sleep(self.every_s)
