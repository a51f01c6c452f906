"""A Redis Sentinel set on loopback, started from a test: a primary, a replica and three
sentinels (``redis-server --sentinel``), each on a free private port with its config
file in a temporary directory. The sentinels judge the primary down after
``DOWN_AFTER_MS`` without an answer and fail over at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from promisekit import free_port

from bridge.emulator.testing import wait_until

MASTER = "bridgemaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is needed for the Sentinel test (scripts/ensure-redis)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


class SentinelSet:
    """A primary, a replica and three sentinels; ``url`` is the bridge's sentinel:// URL."""

    def __init__(self, workdir: Path) -> None:
        self.binary = redis_binary()
        self.workdir = workdir
        self.ports = {"primary": free_port(), "replica": free_port()}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ";".join(f"sentinel://127.0.0.1:{p}/0" for p in self.sentinel_ports)

    def _start(self, name: str, config: str, *extra: str) -> None:
        path = self.workdir / f"{name}.conf"
        path.write_text(config, encoding="utf-8")
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [self.binary, str(path), *extra], stdout=out, stderr=subprocess.STDOUT
            )

    def start(self) -> None:
        primary, replica = self.ports["primary"], self.ports["replica"]
        base = 'bind 127.0.0.1\nsave ""\nappendonly no\nprotected-mode no\n'
        self._start("primary", f"port {primary}\ndir {self.workdir}\n{base}")
        self._start(
            "replica",
            f"port {replica}\ndir {self.workdir}\n{base}replicaof 127.0.0.1 {primary}\n",
        )
        wait_until(lambda: self._role(replica) == ("slave", "up"), timeout=30)
        for number, port in enumerate(self.sentinel_ports):
            self._start(
                f"sentinel{number}",
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.workdir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 1\n",
                "--sentinel",
            )
        wait_until(lambda: all(self._sees_everyone(p) for p in self.sentinel_ports), timeout=30)

    def _role(self, port: int) -> tuple[str, str] | None:
        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            info = client.info("replication")
        except redis.RedisError:
            return None
        finally:
            client.close()
        return str(info["role"]), str(info.get("master_link_status", ""))

    def _sees_everyone(self, port: int) -> bool:
        """This sentinel knows the replica and the two other sentinels."""
        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            master = client.sentinel_master(MASTER)
        except redis.RedisError:
            return False
        finally:
            client.close()
        return int(master["num-slaves"]) >= 1 and int(master["num-other-sentinels"]) >= 2

    def primary_port(self) -> int | None:
        """The primary's port as the sentinels' majority sees it."""
        seen: list[int] = []
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
            try:
                _, found = client.sentinel_get_master_addr_by_name(MASTER)
                seen.append(int(found))
            except (redis.RedisError, TypeError):
                pass
            finally:
                client.close()
        best = max(set(seen), key=seen.count, default=None)
        return best if best is not None and seen.count(best) >= 2 else None

    def client(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.ports[name], socket_timeout=5, socket_connect_timeout=5)

    def kill_primary(self) -> float:
        """SIGKILL the primary; returns when (monotonic)."""
        proc = self.procs.pop("primary")
        at = time.monotonic()  # before: a reply read after this may predate the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return at

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()
