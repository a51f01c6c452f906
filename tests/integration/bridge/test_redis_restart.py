"""Redis restarts in the middle of a run (a private server with append-only persistence):
the worker reconnects by itself and every accepted request still gets its one reply."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bridgekit import cleanup, make_setup
from conftest import assert_no_late_replies, start_worker, stop_processes, wait_ready

from bridge.emulator.testing import EmulatorHandle, wait_until

OUTAGE_LINE = "Connection refused"  # what the worker logs when Redis has gone


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (scripts/ensure-redis installs it)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self.answers, timeout=20)

    def answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: Redis flushes the append-only file and exits
            self.proc.wait(timeout=20)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def replies_surviving_outages(client: redis.Redis, reply_to: str, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    found: list[Any] = []
    while time.monotonic() < deadline:
        try:
            item = client.blpop([reply_to], timeout=1)
        except redis.ConnectionError:
            time.sleep(0.2)
            continue
        if item is not None:
            found.append(json.loads(item[1]))
            if found[-1]["type"] == "result":
                break
    return found


def test_worker_survives_a_redis_restart(
    emulator: EmulatorHandle, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    setup = make_setup(emulator, private_redis.url, tmp_path / "worker.log")
    submissions = emulator.stats("echo")["submissions"]
    worker = start_worker(setup.env, setup.log)
    try:
        wait_ready(setup.app, worker, setup.log)
        # 8 s jobs: all 100 are still running when the last is submitted, however slowly
        sent = [setup.producer.send("echo", {"k": k, "sleep_ms": 8000}) for k in range(100)]
        wait_until(lambda: setup.states([r for r, _ in sent]) == {b"submitted": 100}, timeout=60)
        noticed = setup.log.read_text().count(OUTAGE_LINE)
        private_redis.stop()
        # Redis stays away until the worker has run into the outage
        wait_until(lambda: setup.log.read_text().count(OUTAGE_LINE) > noticed, timeout=30)
        private_redis.start()
        after = [setup.producer.send("echo", {"after": k}) for k in range(20)]
        replies = [replies_surviving_outages(setup.redis, to, 60) for _, to in sent + after]
        assert_no_late_replies(setup.redis, setup.settings, [to for _, to in sent + after])
        assert worker.poll() is None, "the worker died with Redis"
    finally:
        stop_processes([worker])
        cleanup(setup)
    assert [len(r) for r in replies] == [1] * 120
    assert {r[-1]["status"] for r in replies} == {"COMPLETED"}
    # one GPU job per request, counted by the endpoint: a resubmission would show here
    assert emulator.stats("echo")["submissions"] - submissions == 120
