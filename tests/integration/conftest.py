"""The integration tier: every test under this directory is marked ``integration``
(so ``pytest -m "not integration"`` is the unit tier alone), and the services these
tests need are found or started here: a real Redis, a real RabbitMQ, the emulator on a
real socket.

A service that answers at its URL is used as it is; otherwise a private server is
started on free ports for this test session, in a temporary directory, and stopped at
the end (``scripts/ensure-redis`` and ``scripts/ensure-rabbitmq``, run by ``make
test``, install the servers when they are missing). When ``CI`` is set, a service that
can be neither found nor started fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from bridge.emulator.testing import EmulatorHandle, running_emulator

HERE = Path(__file__).resolve().parent
IN_CI = bool(os.environ.get("CI"))
# Erlang boots RabbitMQ in ~7 s on an idle 2-core machine; a busy one takes longer.
RABBITMQ_START_S = 120.0


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected under this directory ``integration`` (by where it is,
    not by hand: a new test file cannot forget it)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: a missing service must never pass silently there."""
    if IN_CI:
        pytest.fail(f"required service unavailable in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis: BRIDGE_REDIS_URL / 127.0.0.1:6379 when it answers, else a
    private ``redis-server`` started on a free port for this test session."""
    url = os.environ.get("BRIDGE_REDIS_URL", "redis://127.0.0.1:6379/0")
    parsed = urlparse(url)
    if _redis_answers(parsed.hostname or "127.0.0.1", parsed.port or 6379):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no Redis answers and no redis-server binary (run scripts/ensure-redis)")
    assert binary is not None
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bridge-redis-") as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not _redis_answers("127.0.0.1", port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    unavailable("private redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


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


def rabbitmq_server() -> str | None:
    """The real start script: Debian's ``/usr/sbin/rabbitmq-server`` is a wrapper that
    switches to the ``rabbitmq`` user and its system-wide directories."""
    debian = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    return str(debian) if debian.exists() else shutil.which("rabbitmq-server")


class PrivateRabbitMQ:
    """A RabbitMQ node of our own: its own node name, AMQP, distribution and epmd ports,
    config, Mnesia and log directories, all under ``workdir``; nothing system-wide is
    read or changed (the system's ``/etc/rabbitmq`` files are not read either)."""

    def __init__(self, server: str, workdir: Path) -> None:
        self.port, dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.log = workdir / "server.out"
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "disk_free_limit.absolute = 1MB\n"  # a test machine's disk may be nearly full
        )
        (workdir / "rabbitmq-env.conf").write_text("")
        (workdir / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(workdir),  # the Erlang cookie goes here
            "RABBITMQ_NODENAME": f"bridge-test-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_PID_FILE": str(workdir / "pid"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [server], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=workdir,
            )  # fmt: skip

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if _amqp_answers(self.url):
                return True
            time.sleep(0.25)
        return False

    def stop(self) -> None:
        """SIGTERM: the start script stops the node cleanly; then its private epmd."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if Path(epmd).exists():
            subprocess.run([epmd, "-kill"], env=self.env, capture_output=True, timeout=10)


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real RabbitMQ: BRIDGE_TEST_AMQP_URL (default guest@127.0.0.1:5672) when
    it answers, else a private node started for this test session."""
    url = os.environ.get("BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
    if _amqp_answers(url):
        yield url
        return
    server = rabbitmq_server()
    if server is None:
        unavailable(
            f"no RabbitMQ answers at {urlparse(url).hostname}:{urlparse(url).port} and no "
            "rabbitmq-server is installed (run scripts/ensure-rabbitmq)"
        )
    assert server is not None
    node = PrivateRabbitMQ(server, tmp_path_factory.mktemp("rabbitmq"))
    try:
        if not node.wait_ready(RABBITMQ_START_S):
            unavailable(
                f"private RabbitMQ did not start in {RABBITMQ_START_S:.0f} s:\n"
                + node.log.read_text(errors="replace")[-3000:]
            )
        yield node.url
    finally:
        node.stop()


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorHandle]:
    """One emulator on a real socket for the whole session (default endpoints)."""
    with running_emulator() as handle:
        yield handle
