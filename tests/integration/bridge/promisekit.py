"""Helpers for the tests that prove DESIGN.md's promises under attack (issue 11).

Everything these tests count, they count at the emulator: its per-endpoint counters
(``EmulatorHandle.stats``) and the jobs it holds (each job's ``input`` carries a marker
naming the request it belongs to). The bridge's own ledger is never the witness.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis
from bridgekit import Setup
from prometheus_client.parser import text_string_to_metric_families

from bridge.emulator.settings import EndpointConfig
from bridge.emulator.testing import EmulatorHandle
from bridge.settings import BridgeSettings

FAST = {
    "workersMax": 500,
    "coldStartMs": 0,
    "scalerType": "REQUEST_COUNT",
    "scalerValue": 1,
    "idleTimeout": 60,
}
"""An endpoint that runs every job at once (no cold start, a worker per job)."""


def add_endpoint(emulator: EmulatorHandle, name: str, **config: Any) -> str:
    """Add an endpoint of its own to the emulator (an ``echo`` one, fast unless
    ``config`` says otherwise) and return its id: its counters count this test alone."""
    endpoint_id = f"{name}-{uuid.uuid4().hex[:6]}"
    fields = {"templateId": "echo", **FAST, **config}
    emulator.call(emulator.engine.add_endpoint, EndpointConfig(id=endpoint_id, **fields))
    return endpoint_id


def jobs_by_marker(emulator: EmulatorHandle, endpoint_id: str, marker: str) -> Counter[str]:
    """How many jobs the endpoint holds for each value of ``input[marker]``: the
    endpoint's own count of submissions per request."""

    def read() -> list[Any]:
        state = emulator.engine.endpoint(endpoint_id)
        return [job.input.get(marker) for job in state.jobs.values()]

    return Counter(str(value) for value in emulator.call(read) if value is not None)


def job_statuses(emulator: EmulatorHandle, endpoint_id: str) -> Counter[str]:
    """The endpoint's jobs by status, as the endpoint sees them."""

    def read() -> list[str]:
        return [job.status for job in emulator.engine.endpoint(endpoint_id).jobs.values()]

    return Counter(emulator.call(read))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def drain(client: redis.Redis, reply_to: str, timeout: float) -> list[dict[str, Any]]:
    """Every message on ``reply_to`` until its final reply (or ``timeout``); a Redis that
    is briefly away is waited for."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            item = client.blpop([reply_to], timeout=max(0.05, min(left, 1.0)))
        except redis.ConnectionError:
            time.sleep(0.2)  # Redis is away: ask again (a bounded wait, not an event)
            continue
        if item is not None:
            found.append(json.loads(item[1]))
            if found[-1].get("type") == "result":
                break
    return found


def finals(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in replies if r.get("type") == "result"]


def dead_letters(client: redis.Redis, stream: str, reason: str) -> list[str]:
    """Request ids dead-lettered with ``reason``, one entry each as written."""
    return [
        fields[b"request_id"].decode()
        for _, fields in client.xrange(stream)
        if fields.get(b"reason") == reason.encode()
    ]


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of a worker's Prometheus metrics (0 when absent)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    wanted = tuple(sorted(labels.items()))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and tuple(sorted(sample.labels.items())) == wanted:
                return float(sample.value)
    return 0.0


def routes_setup(
    emulator: EmulatorHandle,
    redis_url: str,
    log: Path,
    routes: dict[str, dict[str, Any]],
    settings: dict[str, str] | None = None,
) -> Setup:
    """Like ``bridgekit.make_setup`` (own keys, 3 s leases), with several routes: each
    starts from the built-in ``echo`` route and takes its changes from ``routes``."""
    tag = uuid.uuid4().hex[:8]
    overrides = {
        "redis_url": redis_url,
        "emulator_url": emulator.url,
        "key_prefix": f"pt-{tag}",
        "requests_stream": f"pt-{tag}:requests",
        "dlq_stream": f"pt-{tag}:dlq",
        "default_queue": f"pt-{tag}",
        "lease_ttl_s": "3",
        "recovery_interval_s": "0.5",
        **(settings or {}),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
    env.update({f"BRIDGE_{k.upper()}": v for k, v in overrides.items()})
    echo = BridgeSettings.load(**overrides).routes["echo"]
    common = {"queue": f"pt-{tag}", "long_poll_below": 2000, "max_in_flight": 2000}
    built = {
        name: echo.model_copy(update={**common, **changes}) for name, changes in routes.items()
    }
    env["BRIDGE_ROUTES"] = json.dumps({n: r.model_dump(mode="json") for n, r in built.items()})
    return Setup(env, BridgeSettings.load(**overrides, routes=built), log)
