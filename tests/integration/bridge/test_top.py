"""``bridge top`` on a real terminal: the live view runs in tmux (``capture-pane`` reads
what a person would see) while real workers take requests, a second worker comes and is
killed, and Ctrl-C ends it with status 0. ``--once`` prints one frame; Redis out of reach
is ``Error: …`` and exit 1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Bridge, MakeBridge, start_worker, wait_ready

from bridge.devstack import free_port
from bridge.emulator.testing import wait_until


def tmux_binary() -> str:
    """tmux, or a skip (a failure when ``CI`` is set): ``apt-get install -y tmux``."""
    found = shutil.which("tmux")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is needed for test_top.py (apt-get install -y tmux)")
        pytest.skip("tmux not installed (apt-get install -y tmux)")
    return found


class Terminal:
    """One tmux session on a private server socket, 220 columns by 60 rows."""

    def __init__(self, env: dict[str, str], command: list[str], workdir: Path) -> None:
        self.tmux = tmux_binary()
        self.socket = f"bridge-top-{uuid.uuid4().hex[:8]}"
        self.status = workdir / "status"
        self.env = env
        line = " ".join(command) + f'; echo "exit=$?" > {self.status}; sleep 60'
        self._tmux("new-session", "-d", "-s", "top", "-x", "220", "-y", "60", line)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-L", self.socket, *args],
            env=self.env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "top")

    def wait_for(self, check: Callable[[str], bool], what: str, timeout: float = 30) -> str:
        seen = {"screen": ""}

        def look() -> bool:
            seen["screen"] = self.screen()
            return check(seen["screen"])

        try:
            wait_until(look, timeout=timeout, interval=0.2)
        except AssertionError:
            raise AssertionError(f"{what}; the screen:\n{seen['screen']}") from None
        return seen["screen"]

    def ctrl_c(self) -> None:
        self._tmux("send-keys", "-t", "top", "C-c")

    def close(self) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True)


def cells(screen: str, first: str) -> list[str] | None:
    """The cells of the row whose first cell is ``first`` (None: no such row)."""
    for line in screen.splitlines():
        parts = line.split()
        if parts[:1] == [first]:
            return parts
    return None


def route_row(screen: str, route: str) -> list[str]:
    """route endpoint wait [+n] run done/m fail/m p50 p99 breaker ..."""
    row = cells(screen, route) or cells(screen, route + "!") or []
    return [c for c in row if not c.startswith("+")]


@pytest.fixture(scope="module")
def fleet(make_bridge: MakeBridge) -> Bridge:
    return make_bridge(lease_ttl_s=3, recovery_interval_s=0.5)


@pytest.fixture
def terminal(fleet: Bridge, tmp_path: Path) -> Iterator[Terminal]:
    env = {**fleet.env, "PYTHONUNBUFFERED": "1", "TERM": "xterm-256color"}
    term = Terminal(env, [sys.executable, "-m", "bridge", "top"], tmp_path)
    try:
        yield term
    finally:
        term.close()


def owner_of(proc: subprocess.Popen[bytes]) -> str:
    return f"{socket.gethostname()}:{proc.pid}"


def test_the_live_view_follows_requests_and_workers(
    fleet: Bridge, terminal: Terminal, tmp_path: Path
) -> None:
    first = owner_of(fleet.procs[0])
    screen = terminal.wait_for(lambda s: (cells(s, first) or [""])[1:2] == ["alive"],
                               "the running worker is shown alive")  # fmt: skip
    assert route_row(screen, "echo")[2:4] == ["0", "0"]  # nothing waiting, nothing running

    # requests at the endpoint: shown as running, in the worker's in-flight count
    sent = [fleet.producer.send("echo", {"sleep_ms": 6000, "i": i}) for i in range(6)]
    screen = terminal.wait_for(lambda s: route_row(s, "echo")[3:4] == ["6"],
                               "6 requests running at the endpoint")  # fmt: skip
    assert (cells(screen, first) or [])[-1] == "6"
    for _, reply_to in sent:
        assert fleet.result(reply_to)["status"] == "COMPLETED"
    screen = terminal.wait_for(
        lambda s: route_row(s, "echo")[3:4] == ["0"] and route_row(s, "echo")[4] != "0",
        "the finished requests counted per minute",
    )
    row = route_row(screen, "echo")
    assert row[6].endswith("s")  # p50 of 6 s jobs: seconds, not "-"
    assert float(row[6].removesuffix("s")) >= 6.0

    # a second worker comes, then dies (SIGKILL): alive, then not
    log = tmp_path / "second.log"
    second = start_worker(fleet.env, log, celery_args=("-n", f"second-{uuid.uuid4().hex[:6]}@%h"))
    try:
        wait_ready(fleet.app, second, log, node=None)
        name = owner_of(second)
        terminal.wait_for(lambda s: (cells(s, name) or [""])[1:2] == ["alive"],
                          "the second worker shown alive")  # fmt: skip
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=30)
        terminal.wait_for(lambda s: (cells(s, name) or ["", ""])[1] != "alive",
                          "the killed worker no longer shown alive")  # fmt: skip
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(timeout=30)
    assert (cells(terminal.screen(), first) or [""])[1:2] == ["alive"]

    # Ctrl-C ends it quietly, with status 0
    terminal.ctrl_c()
    wait_until(terminal.status.exists, timeout=20)
    assert terminal.status.read_text().strip() == "exit=0"
    assert "Traceback" not in terminal.screen()


def run_top(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "top", *args],
        env={**env, "COLUMNS": "220"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_once_prints_one_frame(fleet: Bridge) -> None:
    done = run_top(fleet.env, "--once")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("bridge top") == 1
    assert (cells(done.stdout, owner_of(fleet.procs[0])) or [""])[1:2] == ["alive"]
    assert route_row(done.stdout, "echo")[:2] == ["echo", "echo"]


def test_redis_out_of_reach_is_an_error(fleet: Bridge) -> None:
    env = {**fleet.env, "BRIDGE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (["--once"], []):
        done = run_top(env, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.startswith("Error: cannot reach Redis"), done.stderr
        assert "Traceback" not in done.stderr
