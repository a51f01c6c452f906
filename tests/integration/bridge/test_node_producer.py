"""The Node.js producer (examples/node-producer) end to end: `npm ci` installs the `redis`
package from the npm registry into a copy of the example, and the script sends envelopes
to a real worker, which follows the jobs on the emulator; what the script prints is
checked line by line. Skipped where node or npm is missing; failed then under CI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Bridge

from bridge.emulator.testing import EmulatorHandle, wait_until

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "node-producer"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed: the Node.js producer example cannot run"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example with its dependencies installed from its lock file."""
    node, npm = tool("node"), tool("npm")
    assert subprocess.run([node, "--version"], capture_output=True, check=True).returncode == 0
    workdir = tmp_path_factory.mktemp("node-producer") / "node-producer"
    shutil.copytree(EXAMPLE, workdir, ignore=shutil.ignore_patterns("node_modules"))
    installed = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=workdir, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return workdir / "producer.mjs"


def run(producer: Path, bridge: Bridge, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    env = {
        **os.environ,
        "REDIS_URL": bridge.settings.redis_url,
        "BRIDGE_REQUESTS_STREAM": bridge.settings.requests_stream,
        "REPLY_PREFIX": f"{bridge.settings.key_prefix}-node:",  # removed with the bridge's keys
    }
    done = subprocess.run(
        [tool("node"), str(producer), *args, "--timeout", "60"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines, done.stderr


def test_a_streamed_request_its_chunks_then_its_result(
    producer: Path, bridge: Bridge, emulator: EmulatorHandle
) -> None:
    before = emulator.stats("stream")["submissions"]
    code, lines, err = run(producer, bridge, "stream", '{"n": 3}', "--mode", "stream",
                           "--id", "node-stream-1")  # fmt: skip
    assert code == 0, err
    *chunks, result = lines
    assert [c["type"] for c in chunks] == ["chunk"] * 3
    assert [c["seq"] for c in chunks] == [0, 1, 2]
    assert [c["output"] for c in chunks] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert {c["id"] for c in chunks} == {"node-stream-1"}
    assert result["type"] == "result"
    assert result["id"] == "node-stream-1"
    assert result["status"] == "COMPLETED"
    assert result["output"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert result["submissions"] == 1
    assert emulator.stats("stream")["submissions"] - before == 1


def test_a_polled_request_and_the_exit_status_of_failures(producer: Path, bridge: Bridge) -> None:
    code, lines, err = run(producer, bridge, "echo", '{"prompt": "hi"}')
    assert code == 0, err
    assert [(r["type"], r["status"], r["output"]) for r in lines] == [
        ("result", "COMPLETED", {"prompt": "hi"})
    ]
    code, lines, _ = run(producer, bridge, "fail", "{}")
    assert code == 1
    assert [r["status"] for r in lines] == ["FAILED"]
    code, lines, _ = run(producer, bridge, "no-such-route", "{}")
    assert code == 1
    assert [(r["status"], r["reason"]) for r in lines] == [("REJECTED", "unknown_route")]


def test_mistakes_get_a_clear_message(producer: Path, bridge: Bridge) -> None:
    code, lines, err = run(producer, bridge, "echo", "[1, 2]")
    assert (code, lines) == (2, [])
    assert "the input must be a JSON object" in err
    code, _, err = run(producer, bridge, "echo", "{}", "--mode", "fast")
    assert code == 2
    assert "--mode must be one of poll, stream, sync, webhook" in err


def test_ctrl_c_cancels_the_job_at_the_endpoint(
    producer: Path, bridge: Bridge, emulator: EmulatorHandle
) -> None:
    request_id = f"node-cancel-{os.getpid()}"
    env = {
        **os.environ,
        "REDIS_URL": bridge.settings.redis_url,
        "BRIDGE_REQUESTS_STREAM": bridge.settings.requests_stream,
        "REPLY_PREFIX": f"{bridge.settings.key_prefix}-node:",
    }
    proc = subprocess.Popen(
        [tool("node"), str(producer), "echo", '{"sleep_ms": 60000}', "--id", request_id],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        record = f"{bridge.settings.key_prefix}:req:{request_id}"
        wait_until(lambda: bridge.redis.hget(record, "job_id") is not None, timeout=30)
        job_id = bridge.redis.hget(record, "job_id").decode()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    (result,) = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert (result["status"], result["reason"]) == ("CANCELLED", "cancelled")
    assert f"cancelling {request_id}" in err
    with emulator.client() as http:  # the cancel reached the endpoint
        assert http.get(f"/echo/status/{job_id}").json()["status"] == "CANCELLED"
