"""Helpers every benchmark script uses (they run as scripts: ``python bench/x.py``):
subprocesses and what ``/proc`` says about them, a private Redis and its counters, the
emulator as a subprocess, reading reply lists, percentiles. Nothing here imports the
bridge: what a script needs from the product is in ``_bridge.py``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

KEY = "bench-key"
"""The key the bridge (or the client under test) presents to the emulator."""
PROBE_KEY = "bench-probe"
"""The key the benchmark's own probes present: the emulator's rate limits are per key,
so its /health reads never take from the bridge's windows."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- ports and processes -----------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now, on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 20) -> None:
    """Return once something accepts connections on ``port``; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:g} s")


@contextlib.contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess logging to ``log``, stopped (SIGTERM, then SIGKILL) on exit."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM ``proc`` (resuming it if stopped), SIGKILL it after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    return sum(cpu_split(pid))


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of ``/proc/PID/status`` (``VmRSS``, ``VmHWM`` …) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores together."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


# -- Redis --------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """``url`` if given; else a private ``redis-server`` on a free port, without
    persistence, stopped on exit. A private one makes Redis CPU time and command counts
    the benchmark's own (other work on a shared Redis would be counted otherwise)."""
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        fallback = os.environ.get("BRIDGE_REDIS_URL", "redis://127.0.0.1:6379/0")
        print(f"no redis-server binary: using the shared Redis at {fallback}", file=sys.stderr)
        yield fallback
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", workdir]  # fmt: skip
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, timeout=10)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop(proc)


@dataclass(frozen=True)
class RedisSnapshot:
    """Redis' CPU time and command counts at one moment (``INFO``)."""

    cpu_s: float
    calls: dict[str, int]

    @classmethod
    def take(cls, client: redis.Redis) -> RedisSnapshot:
        info: dict[str, Any] = client.info("all")
        calls = {
            key.removeprefix("cmdstat_"): int(value["calls"])
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }
        return cls(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]), calls)

    def commands_since(self, before: RedisSnapshot) -> dict[str, int]:
        """Commands run between ``before`` and this snapshot, by name, without the
        benchmark's own ``INFO`` calls."""
        delta = {k: v - before.calls.get(k, 0) for k, v in self.calls.items()}
        delta.pop("info", None)
        return {k: v for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v > 0}


def per_request(counts: dict[str, int], n: int, top: int = 8) -> dict[str, float]:
    """``counts`` divided by ``n``, the ``top`` largest, plus their ``total``."""
    shares = {k: round(v / n, 2) for k, v in list(counts.items())[:top]}
    return {"total": round(sum(counts.values()) / n, 2), **shares}


def drain(
    client: redis.Redis,
    key: str,
    want: int,
    deadline: float,
    seen: Callable[[bytes, float], bool],
) -> int:
    """Pop items of list ``key`` until ``seen(item, monotonic_time)`` has returned True
    ``want`` times or ``deadline`` (monotonic) passes; returns that count."""
    got = 0
    while got < want and (left := deadline - time.monotonic()) > 0:
        item = client.blpop([key], timeout=max(0.01, min(left, 1.0)))
        if item is None:
            continue
        now = time.monotonic()
        for raw in [item[1], *(client.lpop(key, 1000) or [])]:
            got += seen(raw, now)
    return got


# -- the emulator ---------------------------------------------------------------------------


ECHO_ENDPOINT_TOML = """
[server]
cold_start_ms = {cold_start_ms}

[[templates]]
id = "echo"
imageName = "echo"

[[endpoints]]
id = "echo"
templateId = "echo"
workersMax = {workers}
scalerType = "REQUEST_COUNT"
scalerValue = 1
idleTimeout = 600
"""


class Emulator:
    """The emulator as a subprocess on loopback, and its inspection API.

    Args:
        logs: folder of its log file (and of its configuration file, if any).
        rate_limits: keep RunPod's default limits (429 past them), or switch them off.
        workers: give its one endpoint, ``echo``, this many workers, so that that many
            jobs run at once (the built-in ``echo`` has 100: more would queue); None: the
            built-in endpoints.
        cold_start_ms: a new worker's start time when ``workers`` is given.
    """

    def __init__(
        self,
        logs: Path,
        *,
        rate_limits: bool,
        workers: int | None = None,
        cold_start_ms: int = 1000,
    ) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        config = None
        if workers is not None:
            config = logs / f"emulator-echo-{workers}.toml"
            config.write_text(
                ECHO_ENDPOINT_TOML.format(workers=workers, cold_start_ms=cold_start_ms)
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v2"
        self.env = {
            **os.environ,
            "BRIDGE_EMULATOR_API_KEYS": f"{KEY},{PROBE_KEY}",
            "BRIDGE_EMULATOR_RATE_LIMITS_ENABLED": "true" if rate_limits else "false",
        }
        options = ["--config", str(config)] if config else []
        self.command = [sys.executable, "-m", "bridge", "emulator", "--port", str(self.port),
                        "--log-level", "WARNING", *options]  # fmt: skip
        self.log = logs / f"emulator-{self.port}.log"
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {PROBE_KEY}"}, timeout=60
        )
        self.pid = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[Emulator]:
        with process(self.command, self.env, self.log) as proc:
            self.pid = proc.pid
            wait_listening(self.port)
            try:
                yield self
            finally:
                self.http.close()

    def _get(self, path: str) -> dict[str, Any]:
        response = self.http.get(path)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stats(self, endpoint_id: str) -> dict[str, Any]:
        """Its counters for the endpoint: submissions, 429s, requests by operation …"""
        return self._get(f"/_emulator/stats/{endpoint_id}")

    def jobs(self, endpoint_id: str) -> list[dict[str, Any]]:
        """Every job it still holds for the endpoint, as ``/status`` objects."""
        jobs: list[dict[str, Any]] = self._get(f"/_emulator/jobs/{endpoint_id}")["jobs"]
        return jobs

    def health(self, endpoint_id: str) -> dict[str, Any]:
        """The endpoint's ``/health`` (jobs by state, workers by state)."""
        return self._get(f"/v2/{endpoint_id}/health")

    def requests(self, endpoint_id: str, operations: tuple[str, ...] | None = None) -> int:
        """Queue API requests the endpoint has answered (``operations`` only, if given;
        ``health`` never: the benchmark's own probes use it)."""
        counts: dict[str, int] = self.stats(endpoint_id)["requests"]
        return sum(
            v
            for op, v in counts.items()
            if op != "health" and (operations is None or op in operations)
        )


# -- figures ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Wait, bounded, until ``check()``; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - start
