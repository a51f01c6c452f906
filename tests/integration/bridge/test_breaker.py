"""The circuit breaker: it opens on a dead endpoint, requests wait in the broker (stream
entries unacknowledged, Celery tasks handed back), and all complete once it returns."""

from __future__ import annotations

import subprocess
import sys

from conftest import MakeBridge

from bridge.emulator.testing import EmulatorHandle, wait_until


def test_breaker_opens_requests_wait_then_all_complete(
    make_bridge: MakeBridge, emulator: EmulatorHandle
) -> None:
    bridge = make_bridge(
        breaker_threshold=3, breaker_open_s=3, stale_entry_s=1, routes={"dead": {}}
    )
    endpoint = bridge.settings.routes["dead"].endpoint_id
    breaker_key = f"{bridge.settings.key_prefix}:breaker:{endpoint}"
    emulator.set_faults(endpoint, error_rate=1.0)
    try:
        first = [bridge.producer.send("dead", {"first": k}) for k in range(5)]
        wait_until(lambda: bridge.redis.hget(breaker_key, "state") == b"open", timeout=20)
        later = [bridge.producer.send("dead", {"later": k}) for k in range(10)]
        celery = [bridge.run("dead", {"celery": k}) for k in range(3)]
        # While open, new entries are read but left unacknowledged: they wait in the stream.
        stream, group = bridge.settings.requests_stream, bridge.settings.consumer_group
        wait_until(lambda: bridge.redis.xpending(stream, group)["pending"] >= 10, timeout=20)
        shown = subprocess.run(
            [sys.executable, "-m", "bridge", "health", "dead"],
            env={**bridge.env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "open" in shown.stdout, shown.stdout + shown.stderr
        before = emulator.stats(endpoint)["submissions"]
    finally:
        emulator.set_faults(endpoint)  # the endpoint comes back
    results = [bridge.result(reply_to, timeout=60) for _, reply_to in first + later]
    assert [r["status"] for r in results] == ["COMPLETED"] * 15
    assert [r.get(timeout=60)["celery"] for r in celery] == [0, 1, 2]
    assert bridge.redis.hget(breaker_key, "state") == b"closed"
    assert emulator.stats(endpoint)["submissions"] - before == 18  # each request once
    assert bridge.redis.xpending(stream, group)["pending"] == 0
