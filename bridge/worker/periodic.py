"""What beat schedules: endpoint health checks and queue purges, per route."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from redis.asyncio import Redis

from bridge.core import metrics
from bridge.core.breaker import Breakers
from bridge.core.budget import Budgets
from bridge.core.keys import HEALTH_TTL_FACTOR, Keys
from bridge.errors import RunpodError
from bridge.runpod import AsyncioEndpoint

log = logging.getLogger("bridge.periodic")


class Periodic:
    """Health checks and purges for the routes of one worker process.

    Args:
        redis: where snapshots go and purges are announced.
        keys: the key schema.
        breakers: fed by health checks (a dead endpoint opens its breaker).
        endpoints: each route's endpoint client (without long polls).
        intervals: each route's health interval (snapshots live ten of them).
        budgets: the shared request budgets; a purge takes its slot without waiting.
        purgers: each route's endpoint client for purges (without the budget hook).
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        breakers: Breakers,
        endpoints: dict[str, AsyncioEndpoint],
        intervals: dict[str, float],
        budgets: Budgets,
        purgers: dict[str, AsyncioEndpoint],
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.breakers = breakers
        self.endpoints = endpoints
        self.intervals = intervals
        self.budgets = budgets
        self.purgers = purgers

    async def check_health(self, route: str) -> dict[str, Any]:
        """Read ``/health``, store a snapshot with its time, log what needs attention."""
        endpoint = self.endpoints[route]
        endpoint_id = endpoint.endpoint_id
        snapshot: dict[str, Any] = {"route": route, "endpoint_id": endpoint_id, "at": time.time()}
        try:
            health = await endpoint.health(timeout=10)
        except RunpodError as exc:
            await self.breakers.record(endpoint_id, False)
            snapshot.update(ok=False, error=str(exc), warnings=["endpoint unreachable"])
            log.warning("route %s: endpoint %s unreachable: %s", route, endpoint_id, exc)
        else:
            warnings = _warnings(health)
            for warning in warnings:
                log.warning("route %s: %s", route, warning)
            await self.breakers.record(endpoint_id, True)  # the probe of an open breaker
            metrics.observe_health(route, health)
            snapshot.update(ok=True, health=health, warnings=warnings)
        breaker = await self.breakers.get(endpoint_id)
        snapshot["breaker"] = breaker.state
        if breaker.state != "closed":
            snapshot["warnings"] = [*snapshot["warnings"], f"circuit breaker {breaker.state}"]
        ttl = max(60, int(HEALTH_TTL_FACTOR * (self.intervals.get(route) or 30.0)))
        await self.redis.set(self.keys.health(route), json.dumps(snapshot), ex=ttl)
        return snapshot

    async def purge(self, route: str) -> dict[str, Any]:
        """``/purge-queue``; then every request of ours on that route re-reads its job,
        so each purged one gets its final reply (CANCELLED, reason ``purged``). When the
        purge budget (RunPod: 2 per 10 s) has no slot now, the purge is skipped, not
        waited for: a scheduled purge late is worth nothing, and waiting holds a slot."""
        endpoint = self.purgers[route]
        if not await self.budgets.try_acquire(endpoint.endpoint_id, "purge-queue"):
            log.warning("route %s: purge skipped: its budget has no slot now", route)
            return {"skipped": "budget"}
        result = await endpoint.purge_queue(timeout=10)
        await self.redis.publish(self.keys.purge_channel, route)
        log.info("route %s: purged %s queued job(s)", route, result.get("removed"))
        return result


def _warnings(health: dict[str, Any]) -> list[str]:
    jobs = health.get("jobs") or {}
    workers = health.get("workers") or {}
    warnings = []
    active = sum(int(workers.get(k) or 0) for k in ("idle", "running", "initializing", "ready"))
    if int(jobs.get("inQueue") or 0) > 0 and active == 0:
        warnings.append("jobs are waiting and no worker is running")
    if int(workers.get("unhealthy") or 0) > 0:
        warnings.append(f"{workers['unhealthy']} worker(s) unhealthy")
    return warnings
