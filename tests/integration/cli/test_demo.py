"""``bridge demo`` for real, as a subprocess: it starts the emulator, Redis (found or
private), a worker and beat, tours both doors, and leaves nothing behind — no process,
no Redis key — also when port 8000 is taken and when no Redis answers. The two runs
here follow each other, so the demo is also shown to work twice in a row."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

MARKER = "BRIDGE_DEMO_TEST_RUN"  # not BRIDGE_-prefixed on purpose: the stack strips those


def survivors(run: str) -> list[str]:
    """Command lines of live processes that inherited this run's marker variable."""
    needle = f"{MARKER}={run}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def run_demo(redis_url: str) -> tuple[subprocess.CompletedProcess[str], str]:
    run = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
    env.update({MARKER: run, "BRIDGE_REDIS_URL": redis_url, "COLUMNS": "120"})
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "demo"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return result, run


def check_tour(result: subprocess.CompletedProcess[str], run: str) -> str:
    out = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{out}\n{result.stderr}"
    steps = ["1. A plain job", "2. A streamed job", "3. A job cancelled in flight",
             "4. A failing job", "5. The Celery door", "6. Endpoint health",
             "7. The client library alone"]  # fmt: skip
    for step in steps:
        assert step in out
    assert re.search(r"COMPLETED in \d+ ms", out)
    assert [int(n) for n in re.findall(r"chunk (\d): \{\"i\": \d\}", out)] == [0, 1, 2, 3, 4]
    assert "CANCELLED (reason cancelled); the endpoint received 1 cancel(s)" in out
    assert "FAILED: CUDA out of memory (simulated)" in out
    assert "get() returned {'prompt': 'via Celery'}" in out
    assert "get() raised JobFailed" in out
    for route in ("echo", "fail", "stream"):
        assert re.search(rf"│ {route} +│ \d+\.\ds +│", out), f"no health row for {route}"
    assert "tour complete" in out
    assert survivors(run) == []
    tag = re.search(r"queue (demo-[0-9a-f]{8})", out)
    assert tag is not None
    return tag.group(1)


@pytest.fixture
def port_8000_taken() -> Iterator[None]:
    """Hold port 8000 (unless something else already does)."""
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # taken already: just as good
            blocker.bind(("127.0.0.1", 8000))
            blocker.listen()
        yield


def test_demo_tours_both_doors_and_leaves_nothing_behind(redis_url: str) -> None:
    result, run = run_demo(redis_url)
    tag = check_tour(result, run)
    assert f"Redis         {redis_url}  (found)" in result.stdout
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(f"{tag}*")) == []
    finally:
        client.close()


def test_demo_with_port_8000_taken_and_no_redis_running(port_8000_taken: None) -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI (scripts/ensure-redis installs it)")
        pytest.skip("no redis-server binary to start a private Redis with")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nothing = probe.getsockname()[1]
    result, run = run_demo(f"redis://127.0.0.1:{nothing}/0")
    check_tour(result, run)
    assert "127.0.0.1:8000/" not in result.stdout
    assert "(private redis-server, stopped at the end)" in result.stdout
    assert re.search(r"redis-server \(pid \d+\)", result.stdout)
