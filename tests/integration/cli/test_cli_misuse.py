"""Misuses of the ``bridge`` command as an operator meets them, each in a subprocess:
Redis down (a free port where nothing listens: the machine's Redis is never stopped), a
Redis URL redis-py cannot use, a busy port, an entry id that is not one, endpoints that
do not answer, nobody reading the request stream. Each ends with a line saying what is
wrong and the exit status 1 (2 for a usage error, as click says it), never a traceback
or an ``Unclosed client session`` warning."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis

from bridge.devstack import free_port
from bridge.emulator.testing import EmulatorHandle

NOISE = ("Traceback", "Unclosed client session", "Unclosed connection")


def bridge(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def failed(
    done: subprocess.CompletedProcess[str], error: str, code: int = 1
) -> subprocess.CompletedProcess[str]:
    """Assert ``done`` exited ``code`` with an ``Error: …`` line containing ``error``."""
    both = done.stdout + done.stderr
    assert done.returncode == code, both
    assert not [n for n in NOISE if n in both], both
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert lines, both
    assert error in done.stderr[done.stderr.index(lines[0]) :], both
    return done


@pytest.fixture
def env(redis_url: str, emulator: EmulatorHandle) -> Iterator[dict[str, str]]:
    """A clean environment naming keys of this test only (removed afterwards)."""
    tag = f"cli-err-{uuid.uuid4().hex[:8]}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
    yield {
        **clean,
        "COLUMNS": "200",
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_EMULATOR_URL": emulator.url,
        "RUNPOD_API_KEY": emulator.api_key,
        "BRIDGE_KEY_PREFIX": tag,
        "BRIDGE_REQUESTS_STREAM": f"{tag}:requests",
        "BRIDGE_DLQ_STREAM": f"{tag}:dlq",
    }
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(f"{tag}*"):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
def redis_down(env: dict[str, str]) -> dict[str, str]:
    return {**env, "BRIDGE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}


@pytest.mark.parametrize(
    "args",
    [
        ["health"],
        ["submit", "echo", "{}"],
        ["cancel", "req-1"],
        ["dlq", "list"],
        ["dlq", "replay", "1700000000000-0"],
        ["dlq", "replay", "--all"],
        ["dlq", "purge", "--yes"],
        ["webhooks", "--port", "0"],
    ],
    ids=" ".join,
)
def test_redis_down_is_one_line(redis_down: dict[str, str], args: list[str]) -> None:
    port = redis_down["BRIDGE_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    done = failed(bridge(redis_down, *args), "cannot reach Redis: ")
    assert f"127.0.0.1:{port}" in done.stderr
    assert "(BRIDGE_REDIS_URL)" in done.stderr


def test_health_live_needs_no_redis_to_ask_the_endpoints(redis_down: dict[str, str]) -> None:
    done = bridge(redis_down, "health", "--live")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [n for n in NOISE if n in done.stdout + done.stderr]
    assert "Warning: breaker states unknown: cannot reach Redis" in done.stderr
    assert "echo" in done.stdout


@pytest.mark.parametrize(
    "args",
    [["health"], ["submit", "echo", "{}"], ["dlq", "list"], ["worker"], ["beat"], ["webhooks"]],
    ids=" ".join,
)
def test_a_redis_url_redis_py_cannot_use(env: dict[str, str], args: list[str]) -> None:
    wrong = {**env, "BRIDGE_REDIS_URL": "http://127.0.0.1:6379/0"}
    done = failed(bridge(wrong, *args), "invalid bridge settings in the environment:")
    assert "  redis_url: " in done.stderr
    assert "redis://, rediss://, unix://" in done.stderr
    assert "[BRIDGE_REDIS_URL]" in done.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_webhooks_on_a_busy_port(env: dict[str, str], busy_port: int) -> None:
    failed(
        bridge(env, "webhooks", "--port", str(busy_port)),
        f"cannot listen on 127.0.0.1:{busy_port}: Address already in use",
    )


def test_emulator_on_a_busy_port(env: dict[str, str], busy_port: int) -> None:
    done = bridge(env, "emulator", "--port", str(busy_port))
    both = done.stdout + done.stderr
    assert done.returncode == 1, both
    assert f"Error: cannot listen on 127.0.0.1:{busy_port}: Address already in use" in both
    assert "Traceback" not in both


def test_emulator_on_a_busy_port_leaves_no_session_open(
    env: dict[str, str], busy_port: int
) -> None:
    done = bridge(env, "emulator", "--port", str(busy_port))
    assert "Unclosed client session" not in done.stdout + done.stderr


def test_dlq_replay_of_what_is_not_an_entry_id(env: dict[str, str]) -> None:
    failed(bridge(env, "dlq", "replay", "garbage"), "no dead letter 'garbage': not an entry id")


def test_dlq_replay_of_an_entry_that_is_not_there(env: dict[str, str]) -> None:
    failed(bridge(env, "dlq", "replay", "1-0"), "no dead letter 1-0")


def test_health_live_fails_when_no_endpoint_answers(env: dict[str, str]) -> None:
    nowhere = {**env, "BRIDGE_EMULATOR_URL": f"http://127.0.0.1:{free_port()}"}
    done = failed(bridge(nowhere, "health", "--live"), "no endpoint answered:")
    for route in ("echo", "fail", "stream"):
        assert f"  {route} ({route}): health: ConnectError" in done.stderr
    one = failed(bridge(nowhere, "health", "echo", "--live"), "no endpoint answered:")
    assert "  echo (echo): " in one.stderr


def test_health_live_succeeds_when_endpoints_answer(env: dict[str, str]) -> None:
    done = bridge(env, "health", "--live")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Error" not in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--id", "not/an/id"], "Invalid value for '--id': 'not/an/id' is not a request id"),
        (["--timeout", "0"], "Invalid value for '--timeout': 0.0 is not in the range x>0"),
        (["--mode", "fast"], "Invalid value for '--mode': 'fast' is not one of"),
    ],
)
def test_submit_refuses_bad_options_before_sending(
    env: dict[str, str], redis_url: str, args: list[str], says: str
) -> None:
    failed(bridge(env, "submit", "echo", "{}", *args), says, code=2)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists(env["BRIDGE_REQUESTS_STREAM"]) == 0  # nothing was sent
    finally:
        client.close()


def test_submit_says_when_no_worker_reads_the_stream(env: dict[str, str]) -> None:
    stream = env["BRIDGE_REQUESTS_STREAM"]
    done = bridge(env, "submit", "echo", "{}", "--timeout", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"Warning: no worker has ever read {stream} (it has no consumer group 'bridge')" in (
        done.stderr
    )
    assert "no result within 1s" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
