"""What beat schedules: endpoint health checks and queue purges, per route."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from bridge.errors import RunpodError
from bridge.worker import metrics
from bridge.worker.service import BridgeService

log = logging.getLogger("bridge.periodic")


def health_key(prefix: str, route: str) -> str:
    return f"{prefix}:health:{route}"


async def check_health(service: BridgeService, route_name: str) -> dict[str, Any]:
    """Read ``/health``, store a snapshot with its time, log what needs attention."""
    route = service.tracker.routes[route_name]
    snapshot: dict[str, Any] = {
        "route": route_name,
        "endpoint_id": route.config.endpoint_id,
        "at": time.time(),
    }
    breakers = service.breakers
    try:
        health = await route.plain.health(timeout=10)
    except RunpodError as exc:
        await breakers.record(route.config.endpoint_id, False)
        snapshot.update(ok=False, error=str(exc), warnings=["endpoint unreachable"])
        log.warning(
            "route %s: endpoint %s unreachable: %s", route_name, route.config.endpoint_id, exc
        )
    else:
        jobs = health.get("jobs") or {}
        workers = health.get("workers") or {}
        warnings = []
        active = sum(int(workers.get(k) or 0) for k in ("idle", "running", "initializing", "ready"))
        if int(jobs.get("inQueue") or 0) > 0 and active == 0:
            warnings.append("jobs are waiting and no worker is running")
        if int(workers.get("unhealthy") or 0) > 0:
            warnings.append(f"{workers['unhealthy']} worker(s) unhealthy")
        for warning in warnings:
            log.warning("route %s: %s", route_name, warning)
        await breakers.record(route.config.endpoint_id, True)  # the probe of an open breaker
        metrics.observe_health(route_name, health)
        snapshot.update(ok=True, health=health, warnings=warnings)
    breaker = await breakers.get(route.config.endpoint_id)
    snapshot["breaker"] = breaker.state
    if breaker.state != "closed":
        snapshot["warnings"] = [*snapshot["warnings"], f"circuit breaker {breaker.state}"]
    await service.redis.set(
        health_key(service.settings.key_prefix, route_name), json.dumps(snapshot)
    )
    return snapshot


async def read_health(service: BridgeService, route_name: str) -> dict[str, Any] | None:
    raw = await service.redis.get(health_key(service.settings.key_prefix, route_name))
    return json.loads(raw) if raw else None


async def purge(service: BridgeService, route_name: str) -> dict[str, Any]:
    """``/purge-queue``; then every request of ours on that route re-reads its job, so
    each purged one gets its final reply (CANCELLED, reason ``purged``)."""
    route = service.tracker.routes[route_name]
    result = await route.plain.purge_queue(timeout=10)
    await service.redis.publish(service.ledger.wake_channel, f"purge:{route_name}")
    log.info("route %s: purged %s queued job(s)", route_name, result.get("removed"))
    return result
