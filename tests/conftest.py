"""Shared fixtures: a real Redis, a real RabbitMQ and the emulator on a real socket.

Services a test needs are found or started here. When ``CI`` is set, a missing service
fails the test run instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from bridge.emulator.testing import EmulatorHandle, running_emulator

IN_CI = bool(os.environ.get("CI"))


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: a missing service must never pass silently there."""
    if IN_CI:
        pytest.fail(f"required service unavailable in CI: {reason}")
    pytest.skip(reason)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis: BRIDGE_REDIS_URL / 127.0.0.1:6379 when it answers, else a
    private ``redis-server`` started on a free port for this test session."""
    url = os.environ.get("BRIDGE_REDIS_URL", "redis://127.0.0.1:6379/0")
    parsed = urlparse(url)
    if _answers(parsed.hostname or "127.0.0.1", parsed.port or 6379):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no Redis answers and no redis-server binary (run scripts/ensure-redis)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bridge-redis-") as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not _answers("127.0.0.1", port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    unavailable("private redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _amqp_answers(url: str) -> bool:
    from amqp.exceptions import AMQPError
    from kombu import Connection
    from kombu.exceptions import OperationalError

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.connect()
        return True
    except (OSError, OperationalError, AMQPError):
        return False


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of a real RabbitMQ: BRIDGE_TEST_AMQP_URL, default guest@127.0.0.1:5672."""
    url = os.environ.get("BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
    if not _amqp_answers(url):
        unavailable(f"no RabbitMQ answers at {urlparse(url).hostname}:{urlparse(url).port}")
    return url


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorHandle]:
    """One emulator on a real socket for the whole session (default endpoints)."""
    with running_emulator() as handle:
        yield handle
