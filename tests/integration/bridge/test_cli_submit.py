"""``bridge submit ROUTE '<json>' [--mode] [--timeout]``: through the JSON door to a real
worker; exit 0 only for a completed job, clear errors for bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from conftest import Bridge


def submit(bridge: Bridge, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "submit", *args],
        env={**bridge.env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def stream_length(bridge: Bridge) -> int:
    return int(bridge.redis.xlen(bridge.settings.requests_stream))


def test_completed_job_prints_its_output_and_exits_0(bridge: Bridge) -> None:
    done = submit(bridge, "echo", '{"prompt": "hi from the CLI"}')
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sent to route echo" in done.stdout
    assert "COMPLETED" in done.stdout
    assert '"prompt": "hi from the CLI"' in done.stdout


def test_failed_job_exits_non_zero_with_the_error_verbatim(bridge: Bridge) -> None:
    done = submit(bridge, "fail", '{"message": "no GPU [/today] [bold]x"}')
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stdout
    assert "no GPU [/today] [bold]x" in done.stdout  # not read as console markup


def test_stream_chunks_are_printed_in_order(bridge: Bridge) -> None:
    done = submit(bridge, "stream", '{"n": 3, "interval_ms": 20}')
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    chunks = [line for line in lines if line.startswith("chunk ")]
    assert chunks == ['chunk 0: {"i": 0}', 'chunk 1: {"i": 1}', 'chunk 2: {"i": 2}']
    assert lines.index(chunks[-1]) < next(i for i, x in enumerate(lines) if "COMPLETED" in x)


def test_mode_option_reaches_the_request(bridge: Bridge) -> None:
    request_id = f"cli-{uuid.uuid4()}"
    done = submit(bridge, "echo", '{"m": 1}', "--mode", "sync", "--id", request_id)
    assert done.returncode == 0, done.stdout + done.stderr
    record = bridge.redis.hget(f"{bridge.settings.key_prefix}:req:{request_id}", "request")
    assert json.loads(record or b"{}")["mode"] == "sync"


def test_timeout_without_result_exits_non_zero(bridge: Bridge) -> None:
    request_id = f"cli-slow-{uuid.uuid4()}"
    done = submit(bridge, "echo", '{"sleep_ms": 60000}', "--timeout", "1", "--id", request_id)
    try:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "no result within 1s" in done.stdout
    finally:
        bridge.producer.cancel(request_id)


def test_invalid_json_is_refused_before_sending(bridge: Bridge) -> None:
    before = stream_length(bridge)
    for bad, says in (("{not json", ("JOB_INPUT", "not valid JSON")), ("[1, 2]", ("JSON object",))):
        done = submit(bridge, "echo", bad)
        assert done.returncode != 0
        for piece in says:  # which argument, and what is wrong with it
            assert piece in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert stream_length(bridge) == before


def test_unknown_route_is_refused_before_sending(bridge: Bridge) -> None:
    before = stream_length(bridge)
    done = submit(bridge, "nope", "{}")
    assert done.returncode != 0
    assert "unknown route 'nope'" in done.stderr
    assert "configured: echo" in done.stderr
    assert "Traceback" not in done.stderr
    assert stream_length(bridge) == before
