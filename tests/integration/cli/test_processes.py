"""The bridge's processes as an operator runs them: ``bridge emulator``, ``worker``,
``beat`` and ``webhooks`` with ``--log-format json`` at DEBUG, a RunPod-like API key
for every route. Every line they log is JSON, Celery's task lines carry their task id,
the key never appears in any output, and ``bridge ping`` tells who is alive."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from bridge.cli import main
from bridge.devstack import Stack, free_port, running_stack, stop_processes
from bridge.emulator.testing import wait_until
from bridge.producer import JsonDoorClient
from bridge.worker.app import create_app

KEY = "rpa_" + secrets.token_hex(20).upper()  # shaped like a RunPod key, unique to this run
JSON_LOGS = ("--log-format", "json")


@dataclass
class Processes:
    stack: Stack
    emulator_url: str
    webhooks_url: str
    logs: dict[str, Path]
    outputs: list[str]  # what the commands run by the tests printed

    def bridge(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "bridge", *args],
            env=env or self.stack.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.outputs += [result.stdout, result.stderr]
        return result

    def emulator_get(self, path: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.emulator_url}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def emulator_stats(self, endpoint: str) -> dict[str, Any]:
        """The emulator's own counters for ``endpoint`` (``/_emulator/stats``)."""
        return self.emulator_get(f"/_emulator/stats/{endpoint}")


def wait_for_line(path: Path, pattern: str, proc: subprocess.Popen[bytes]) -> re.Match[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text() if path.exists() else "")
        if found:
            return found
        assert proc.poll() is None, f"exited: {path.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in {path} within 30 s")


def popen(args: list[str], env: dict[str, str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", *args], env=env, stdout=stdout, stderr=stderr
        )


@pytest.fixture(scope="module")
def procs(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    tmp = tmp_path_factory.mktemp("processes")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
    started: list[subprocess.Popen[bytes]] = []
    try:
        emulator = popen(
            ["emulator", "--port", "0", "--log-level", "DEBUG", *JSON_LOGS],
            {**base, "BRIDGE_EMULATOR_API_KEYS": KEY}, tmp / "emulator.out", tmp / "emulator.log",
        )  # fmt: skip
        started.append(emulator)
        url = wait_for_line(tmp / "emulator.out", r"listening on (http://\S+)/v2", emulator)[1]
        with running_stack(
            url,
            redis_url=redis_url,
            log_args=("--loglevel", "DEBUG", *JSON_LOGS),
            extra_env={"RUNPOD_API_KEY": KEY},
        ) as stack:
            port = free_port()
            webhooks = popen(
                ["webhooks", "--port", str(port), "--log-level", "DEBUG", *JSON_LOGS],
                stack.env, tmp / "webhooks.out", tmp / "webhooks.log",
            )  # fmt: skip
            started.append(webhooks)
            wait_for_line(tmp / "webhooks.out", "webhook receiver listening", webhooks)
            logs = {
                "emulator": tmp / "emulator.log",
                "worker": stack.log_path("worker"),
                "beat": stack.log_path("beat"),
                "webhooks": tmp / "webhooks.log",
            }
            yield Processes(stack, url, f"http://127.0.0.1:{port}", logs, [])
    finally:
        stop_processes(started)


@pytest.fixture(scope="module")
def traffic(procs: Processes) -> Processes:
    """Requests through both doors and the operator commands, all with the key."""
    client = JsonDoorClient(procs.stack.settings)
    app = create_app(procs.stack.settings)
    try:
        sent = {
            "echo": client.send("echo", {"prompt": "hi"})[1],
            "stream": client.send("stream", {"n": 3, "interval_ms": 10}, mode="stream")[1],
            "fail": client.send("fail", {"message": "boom"})[1],
        }
        slow_id, slow_reply = client.send("echo", {"sleep_ms": 60_000})
        celery = app.send_task("bridge.run", kwargs={"route": "echo", "input": {"via": "celery"}})
        assert celery.get(timeout=30) == {"via": "celery"}
        finals = {name: list(client.replies(reply, 30))[-1] for name, reply in sent.items()}
        assert {n: r["status"] for n, r in finals.items()} == {
            "echo": "COMPLETED", "stream": "COMPLETED", "fail": "FAILED",
        }  # fmt: skip
        key = f"{procs.stack.settings.key_prefix}:req:{slow_id}"
        deadline = time.monotonic() + 30
        while not client.redis.hget(key, "job_id"):
            assert time.monotonic() < deadline, "the slow job was never submitted"
            time.sleep(0.02)
        cancels = procs.emulator_stats("echo")["cancels"]
        assert procs.bridge("cancel", slow_id).returncode == 0
        cancelled = list(client.replies(slow_reply, 30))[-1]
        assert cancelled["status"] == "CANCELLED", cancelled
        # the endpoint got the cancel: its counter, and the job's own status there
        wait_until(lambda: procs.emulator_stats("echo")["cancels"] > cancels, timeout=30)
        status = procs.emulator_get(f"/v2/echo/status/{cancelled['job_id']}")
        assert status["status"] == "CANCELLED", status
        assert procs.bridge("health", "--live").returncode == 0
        assert procs.bridge("purge", "echo", "--yes").returncode == 0
        denied = httpx.get(f"{procs.emulator_url}/v2/echo/health", headers={"Authorization": "x"})
        assert denied.status_code == 401
    finally:
        app.close()
        client.redis.close()
    return procs


def test_the_key_never_appears_in_any_output(traffic: Processes) -> None:
    texts = {name: path.read_text() for name, path in traffic.logs.items()}
    texts["worker stdout and commands"] = "\n".join(traffic.outputs)
    assert '"POST /v2/echo/run' in texts["emulator"]  # the key was used, and accepted
    assert "bridge.run" in texts["worker"]
    for name, text in texts.items():
        assert KEY not in text, f"the API key appears in the {name} output"
        assert KEY[4:24] not in text, f"part of the API key appears in the {name} output"


def test_every_log_line_is_json_and_task_lines_carry_the_task_id(traffic: Processes) -> None:
    for name, path in traffic.logs.items():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        assert lines, f"{name} logged nothing"
        for line in lines:
            if name == "worker" and line.strip() == "worker: Warm shutdown (MainProcess)":
                continue  # Celery prints this on stdout when it stops; not a log line
            entry = json.loads(line)
            assert {"ts", "level", "logger", "message"} <= set(entry), line
    worker = [json.loads(ln) for ln in traffic.logs["worker"].read_text().splitlines() if ln]
    received = [e for e in worker if re.match(r"Task bridge\.run\[\S+\] received", e["message"])]
    assert received
    assert all(e["message"] == f"Task bridge.run[{e['task_id']}] received" for e in received)


def test_ping_tells_who_is_alive(procs: Processes) -> None:
    def ping(*args: str, **env: str) -> Result:  # in-process: one interpreter start less each
        return CliRunner().invoke(main, ["ping", *args], env={**procs.stack.env, **env})

    assert procs.bridge("ping", "redis").stdout == "redis: ok (Redis answers)\n"  # for real once
    assert ping("worker", "--node", procs.stack.node).exit_code == 0
    assert (
        ping("emulator", "--url", procs.emulator_url, BRIDGE_EMULATOR_API_KEYS=KEY).exit_code == 0
    )
    assert ping("webhooks", "--url", procs.webhooks_url).exit_code == 0
    deadline = time.monotonic() + 30  # beat checks every second; generous for a busy machine
    while ping("beat").exit_code != 0:
        assert time.monotonic() < deadline, "beat's health snapshots never appeared"
        time.sleep(0.2)
    missing = ping("worker", "--node", "nobody@nowhere", "--timeout", "0.5")
    assert missing.exit_code == 1
    assert "worker nobody@nowhere does not answer" in missing.stderr
    wrong = ping("emulator", "--url", procs.emulator_url)  # the development key: refused
    assert (wrong.exit_code, "answered HTTP 401" in wrong.stderr) == (1, True)
    gone = ping("webhooks", "--url", f"http://127.0.0.1:{free_port()}")
    assert (gone.exit_code, "does not answer: ConnectError" in gone.stderr) == (1, True)
