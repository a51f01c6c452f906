"""A worker that cannot serve must not look healthy (issue 15.1): it exits non-zero at
boot when its bridge cannot start (a route's key file missing, the bridge's Redis down),
and `bridge ping worker` asks the bridge itself, not only Celery's consumer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import Bridge, MakeBridge, start_worker

from bridge.devstack import free_port


def _exit_within(proc: subprocess.Popen[bytes], seconds: float) -> int:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"the worker still runs after {seconds} s") from None


def test_a_route_without_its_key_file_stops_the_worker_at_boot(
    bridge: Bridge, tmp_path: Path
) -> None:
    routes = json.loads(bridge.env["BRIDGE_ROUTES"])
    routes["echo"]["api_key_file"] = str(tmp_path / "missing-key")
    env = {**bridge.env, "BRIDGE_ROUTES": json.dumps(routes)}
    log = tmp_path / "worker.log"
    started = time.monotonic()
    code = _exit_within(start_worker(env, log, celery_args=("-n", f"nokey-{bridge.node}")), 30)
    assert code != 0
    assert time.monotonic() - started < 30
    text = log.read_text()
    assert "bridge worker cannot start" in text
    assert "missing-key" in text
    assert " ready." not in text  # Celery never announced itself ready


def test_the_bridges_redis_down_at_boot_stops_the_worker(bridge: Bridge, tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {**bridge.env, "BRIDGE_REDIS_URL": dead,
           "BRIDGE_BROKER_URL": bridge.settings.broker,
           "BRIDGE_RESULT_BACKEND": bridge.settings.backend}  # fmt: skip
    log = tmp_path / "worker.log"
    code = _exit_within(start_worker(env, log, celery_args=("-n", f"noredis-{bridge.node}")), 30)
    assert code != 0
    assert "bridge worker cannot start" in log.read_text()


def test_ping_worker_asks_the_bridge_and_names_a_silent_node(
    make_bridge: MakeBridge, bridge: Bridge
) -> None:
    ping = [sys.executable, "-m", "bridge", "ping", "worker", "--timeout", "10"]
    ok = subprocess.run([*ping, "--node", bridge.node], env=bridge.env,
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "serves" in ok.stdout
    gone = subprocess.run([*ping, "--node", f"nobody-{bridge.node}", "--timeout", "2"],
                          env=bridge.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert gone.returncode == 1
    assert "does not answer" in gone.stderr
