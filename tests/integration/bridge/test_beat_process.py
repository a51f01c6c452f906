"""``bridge beat`` for real: a beat subprocess on a routes file, next to a worker
subprocess, schedules health checks whose snapshots appear in Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import MakeBridge, stop_processes

from bridge.emulator.testing import wait_until


def test_beat_schedules_health_checks_from_the_routes_file(
    make_bridge: MakeBridge, tmp_path: Path
) -> None:
    bridge = make_bridge(config_file=True, routes={"echo": {"health_interval_s": 1}})
    assert "health_interval_s = 1" in Path(bridge.env["BRIDGE_CONFIG"]).read_text()
    key = f"{bridge.settings.key_prefix}:health:echo"
    assert bridge.redis.get(key) is None
    log = tmp_path / "beat.log"
    with log.open("wb") as out:
        beat = subprocess.Popen(
            [sys.executable, "-m", "bridge", "beat", "--schedule", str(tmp_path / "schedule")],
            env=bridge.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        started = time.time()
        wait_until(lambda: bridge.redis.get(key) is not None, timeout=30, interval=0.05)
        first = json.loads(bridge.redis.get(key) or b"{}")
        assert first["ok"] is True, first
        assert first["endpoint_id"] == "echo"
        assert first["at"] >= started
        # every second, not once: a later snapshot replaces it
        wait_until(
            lambda: json.loads(bridge.redis.get(key) or b"{}")["at"] > first["at"],
            timeout=10,
            interval=0.05,
        )
        assert beat.poll() is None, log.read_text()
    finally:
        stop_processes([beat])
        bridge.stop()
    # SIGTERM stops both cleanly (stop_processes falls back to SIGKILL, exit -9, after 20 s)
    assert beat.returncode == 0, log.read_text()[-3000:]
    assert [p.returncode for p in bridge.procs] == [0], bridge.log.read_text()[-3000:]
    assert "Sending due task bridge-health-echo" in log.read_text()
