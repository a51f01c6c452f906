"""Leases and recovery: this process says it is alive, and takes over the requests of
processes that are not (a killed worker's in-flight requests are resumed from their
ledger records by a survivor, or by a restarted worker)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from bridge.core import metrics
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
        clock: a monotonic clock (tests inject one).
    """

    def __init__(
        self,
        leases: Leases,
        tracker: Tracker,
        routes: list[str],
        *,
        every_s: float,
        full_every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leases = leases
        self.tracker = tracker
        self.routes = routes
        self.every_s = every_s
        self.full_every_s = full_every_s
        self.clock = clock
        self.renewed_at = 0.0
        """When the lease was last renewed (monotonic clock): the worker's health."""
        self._hold_until = 0.0
        self._next_full = 0.0
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
        metrics.ADOPTED.inc(len(found.adopted))
        for request_id in found.own:
            resumed += await self.tracker.resume(request_id, own=True)
        if resumed:
            log.info("resumed %d request(s) no live process was following", resumed)
        return resumed

    async def tick(self) -> None:
        """Renew the lease, then adopt orphans, unless this process was cut off from
        Redis for longer than the adoption grace: then every worker probably was (a Redis
        restart, a Sentinel failover), and the others get that grace to reconnect and
        renew before anyone is judged by their silence."""
        await self.leases.renew()
        now = self.clock()
        if self.renewed_at and now - self.renewed_at > self.leases.adopt_after_s:
            self._hold_until = now + self.leases.adopt_after_s
            log.info("back after %.1f s without Redis: adopting again in %g s",
                     now - self.renewed_at, self.leases.adopt_after_s)  # fmt: skip
        self.renewed_at = now
        if now < self._hold_until:
            return
        full = now >= self._next_full
        await self.recover(full=full)
        if full:
            self._next_full = self.clock() + self.full_every_s

    async def run(self) -> None:
        """Renew the lease and adopt orphans, forever; Redis outages are waited out."""
        while True:
            try:
                await self.tick()
            except (RedisError, OSError) as exc:
                log.warning("lease renewal / recovery failed (%s); retrying", exc)
            await asyncio.sleep(self.every_s)
