"""Helpers for bridge integration tests that need their own worker settings."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from conftest import close_app

from bridge.core.connection import sync_redis
from bridge.emulator.testing import EmulatorHandle
from bridge.producer import JsonDoorClient
from bridge.settings import BridgeSettings
from bridge.worker.app import create_app


class Setup:
    def __init__(self, env: dict[str, str], settings: BridgeSettings, log: Path) -> None:
        self.env = env
        self.settings = settings
        self.log = log
        self.redis: redis.Redis = sync_redis(settings.redis_url, settings.sentinel_master)
        self.producer = JsonDoorClient(settings, self.redis)
        self.app = create_app(settings)

    def states(self, request_ids: list[str]) -> dict[bytes | None, int]:
        """How many of these requests are in each ledger state (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for request_id in request_ids:
            pipe.hget(f"{self.settings.key_prefix}:req:{request_id}", "state")
        return dict(Counter(pipe.execute()))


def make_setup(
    emulator: EmulatorHandle,
    redis_url: str,
    log: Path,
    settings: dict[str, str] | None = None,
    **route_changes: Any,
) -> Setup:
    """A worker's environment and settings on its own keys; ``settings`` adds BRIDGE_*
    values, ``route_changes`` changes the ``echo`` route."""
    tag = uuid.uuid4().hex[:8]
    overrides = {
        "redis_url": redis_url,
        "emulator_url": emulator.url,
        "key_prefix": f"rt-{tag}",
        "requests_stream": f"rt-{tag}:requests",
        "dlq_stream": f"rt-{tag}:dlq",
        "default_queue": f"rt-{tag}",
        "lease_ttl_s": "3",
        "recovery_interval_s": "0.5",
        **(settings or {}),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
    env.update({f"BRIDGE_{k.upper()}": v for k, v in overrides.items()})
    routes = {"echo": BridgeSettings.load(**overrides).routes["echo"]}
    routes["echo"] = routes["echo"].model_copy(
        update={
            "queue": f"rt-{tag}",
            "long_poll_below": 2000,
            "max_in_flight": 2000,
            **route_changes,
        }
    )
    env["BRIDGE_ROUTES"] = json.dumps({n: r.model_dump(mode="json") for n, r in routes.items()})
    return Setup(env, BridgeSettings.load(**overrides, routes=routes), log)


def cleanup(setup: Setup) -> None:
    for key in setup.redis.scan_iter(f"{setup.settings.key_prefix}*"):
        setup.redis.delete(key)
    setup.redis.close()
    close_app(setup.app)
