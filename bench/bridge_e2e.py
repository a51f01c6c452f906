"""Bridge end to end: a real bridge worker, the emulator and Redis, next to raw Celery.

Everything runs as subprocesses on loopback, on the Redis at ``--redis-url`` (keys under
a unique prefix, deleted at the end): the emulator, one bridge worker (``python -m bridge
worker --concurrency 4``, threads pool) and, as the baseline, a Celery worker with the
same settings serving a ``noop`` task defined in this file. Three measurements:

1. latency at light load (one request at a time) of 50 ms jobs (``echo`` with
   ``sleep_ms: 50``), enqueue → final reply, through the JSON door and the Celery door,
   next to the job itself and a Celery no-op round trip (``send_task`` + ``get``);
2. throughput of bursts of 0 ms jobs (``echo`` with ``{}``) through both doors next to
   no-op round trips, first send → last reply, and the worker's CPU time per request.
   Emulator rate limits are off and the route's budgets raised for this part;
3. ``--inflight`` long jobs held by one worker at the emulator's default rate limits
   (default budgets and ``long_poll_below``): time until all are submitted, the
   worker's RSS next to its idle RSS, and the emulator's count of 429s.

Rounds alternate the order of the kinds; figures are medians over rounds.

Run: ``.venv/bin/python bench/bridge_e2e.py`` (about 3 min; ``--inflight 10000``, the
design's figure, adds about 2 min).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
from _common import free_port, wait_listening
from celery import Celery

KEY = "bench-key"
JOB_MS = 50
RUN_SLOTS, RUN_SPAN_S = 950, 10.5  # the /run budget: 95 % of 1000 per 10 s, +0.5 s
HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CELERY_SETTINGS: dict[str, Any] = {  # what bridge.worker.app sets, for the baseline too
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 8,
    "worker_send_task_events": True,
    "task_send_sent_event": True,
    "broker_connection_retry_on_startup": True,
}
WORKER_ARGS = ["--without-mingle", "--without-gossip"]


# -- processes and /proc ------------------------------------------------------------------


@contextlib.contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess logging to ``log``, terminated (then killed) on exit."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the workers ----------------------------------------------------------------------------


def noop_app(broker: str) -> Celery:
    """The baseline: a Celery app with the bridge's Celery settings and one no-op task."""
    app = Celery("bench_noop", broker=broker, backend=broker)
    app.conf.update(CELERY_SETTINGS)
    app.task(name="bench.noop")(noop)
    return app


def noop() -> None:
    """The baseline task: nothing, so that its round trip is Celery's own cost."""


def run_noop_worker(broker: str, queue: str, hostname: str, loglevel: str) -> None:
    noop_app(broker).worker_main(
        ["worker", "--pool=threads", "--concurrency=4", f"--loglevel={loglevel}",
         f"--queues={queue}", "--task-events", f"--hostname={hostname}", *WORKER_ARGS]
    )  # fmt: skip


def wait_ready(app: Celery, proc: subprocess.Popen[bytes], hostname: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if app.control.ping(destination=[hostname], timeout=0.5):
            return
    raise RuntimeError(f"worker {hostname} not ready:\n{log.read_text()[-3000:]}")


class Bridge:
    """Names, environment and clients of one bridge worker."""

    def __init__(self, redis_url: str, prefix: str, emulator_url: str, **route: Any) -> None:
        from bridge.producer import JsonDoorClient
        from bridge.settings import BridgeSettings, RouteConfig
        from bridge.worker.app import create_app

        self.prefix = prefix
        self.hostname = f"{prefix}@{socket.gethostname()}"
        routes = {"echo": RouteConfig(endpoint_id="echo", base_url=emulator_url + "/v2",
                                      queue=prefix, **route)}  # fmt: skip
        names = {
            "redis_url": redis_url,
            "emulator_url": emulator_url,
            "key_prefix": prefix,
            "requests_stream": f"{prefix}:requests",
            "dlq_stream": f"{prefix}:dlq",
            "default_queue": prefix,
        }
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
        self.env.update({f"BRIDGE_{k.upper()}": v for k, v in names.items()})
        self.env["BRIDGE_ROUTES"] = json.dumps(
            {n: r.model_dump(mode="json") for n, r in routes.items()}
        )
        self.env["RUNPOD_API_KEY"] = KEY
        self.settings = BridgeSettings(**names, routes=routes)
        self.app = create_app(self.settings)
        self.producer = JsonDoorClient(self.settings)
        self.replies = f"{prefix}:replies"

    def command(self, loglevel: str) -> list[str]:
        return [sys.executable, "-m", "bridge", "worker", "--concurrency", "4", "--loglevel",
                loglevel, "--", *WORKER_ARGS, f"--hostname={self.hostname}"]  # fmt: skip

    def envelope(self, job_input: dict[str, Any]) -> tuple[str, dict[str, str]]:
        request_id = uuid.uuid4().hex
        body = {"id": request_id, "route": "echo", "input": job_input, "reply_to": self.replies}
        return request_id, {"payload": json.dumps(body)}


# -- 1 and 2: latency and throughput ---------------------------------------------------------


class Kinds:
    """One request (for latency) and one burst (for throughput) of each kind."""

    def __init__(self, bridge: Bridge, noop: Celery, noop_queue: str) -> None:
        self.bridge, self.noop, self.noop_queue = bridge, noop, noop_queue
        self.redis = bridge.producer.redis
        self.task_ids: list[str] = []
        self.job_ms: list[int] = []
        self.errors = 0

    def send(self, kind: str, job_input: dict[str, Any]) -> Any:
        if kind == "celery_noop":
            result = self.noop.send_task("bench.noop", queue=self.noop_queue)
        else:
            kwargs = {"route": "echo", "input": job_input}
            result = self.bridge.app.send_task("bridge.run", kwargs=kwargs)
        self.task_ids.append(result.id)
        return result

    def one(self, kind: str) -> float:
        """Milliseconds from enqueue to final reply of one request."""
        start = time.perf_counter()
        if kind == "json_door":
            self.bridge.producer.send("echo", {"sleep_ms": JOB_MS}, reply_to=self.bridge.replies)
            self._check(self.redis.blpop([self.bridge.replies], timeout=30))
        else:
            self.send(kind, {"sleep_ms": JOB_MS}).get(timeout=30)
        return (time.perf_counter() - start) * 1000

    def burst(self, kind: str, n: int) -> float:
        """Send ``n`` 0 ms requests at once; seconds from first send to last reply."""
        if kind == "json_door":
            entries = [self.bridge.envelope({})[1] for _ in range(n)]
            start = time.perf_counter()
            pipe = self.redis.pipeline(transaction=False)
            for fields in entries:
                pipe.xadd(self.bridge.settings.requests_stream, fields)
            pipe.execute()
            for _ in range(n):
                self._check(self.redis.blpop([self.bridge.replies], timeout=60))
            return time.perf_counter() - start
        start = time.perf_counter()
        results = [self.send(kind, {}) for _ in range(n)]
        for result in results:
            result.get(timeout=60, propagate=False)
            self.errors += not result.successful()
        return time.perf_counter() - start

    def _check(self, item: Any) -> None:
        if item is None:
            raise RuntimeError("no reply in time")
        reply = json.loads(item[1])
        if reply.get("status") != "COMPLETED":
            self.errors += 1
        elif "execution_ms" in reply.get("timings", {}):
            self.job_ms.append(reply["timings"]["execution_ms"])


KINDS = ["json_door", "celery_door", "celery_noop"]


def rotated(index: int) -> list[str]:
    return KINDS[index % 3 :] + KINDS[: index % 3]


def measure_latency(kinds: Kinds, rounds: int, singles: int) -> dict[str, Any]:
    for kind in KINDS:  # warm up: connections, emulator workers, imports
        for _ in range(5):
            kinds.one(kind)
    kinds.job_ms.clear()
    samples: dict[str, list[list[float]]] = {k: [] for k in KINDS}
    for index in range(rounds):
        for kind in rotated(index):
            samples[kind].append([kinds.one(kind) for _ in range(singles)])
    figures = {}
    for kind, per_round in samples.items():
        pooled = [x for r in per_round for x in r]
        figures[kind] = {
            "p50_ms": round(statistics.median(percentile(r, 0.5) for r in per_round), 1),
            "p99_ms": round(percentile(pooled, 0.99), 1),
            "round_p50s_ms": [round(percentile(r, 0.5), 1) for r in per_round],
        }
    figures["job_execution_ms_p50"] = statistics.median(kinds.job_ms) if kinds.job_ms else None
    return figures


def emulator_requests(base_url: str) -> int:
    """Queue API requests the emulator's ``echo`` endpoint has answered so far."""
    headers = {"Authorization": f"Bearer {KEY}"}
    stats = httpx.get(f"{base_url}/_emulator/stats/echo", headers=headers).json()
    return sum(stats["requests"].values())


def measure_throughput(
    kinds: Kinds, worker: int, noop_worker: int, emulator: int, rounds: int, n: int
) -> dict[str, Any]:
    emulator_url = kinds.bridge.settings.routes["echo"].base_url.removesuffix("/v2")
    for kind in KINDS:  # warm up: scale the emulator's workers up, open connections
        kinds.burst(kind, max(50, n // 4))
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    cpu: dict[str, list[float]] = {k: [] for k in KINDS}
    emu_cpu: dict[str, list[float]] = {k: [] for k in KINDS}
    redis_cpu: dict[str, list[float]] = {k: [] for k in KINDS}
    client_cpu: dict[str, list[float]] = {k: [] for k in KINDS}
    http: dict[str, list[float]] = {k: [] for k in KINDS}
    for index in range(rounds):
        for kind in rotated(index):
            pid = noop_worker if kind == "celery_noop" else worker
            before = (cpu_seconds(pid), cpu_seconds(emulator), redis_cpu_seconds(kinds.redis),
                      time.process_time())  # fmt: skip
            sent = emulator_requests(emulator_url)
            elapsed = kinds.burst(kind, n)
            http[kind].append((emulator_requests(emulator_url) - sent) / n)
            after = (cpu_seconds(pid), cpu_seconds(emulator), redis_cpu_seconds(kinds.redis),
                     time.process_time())  # fmt: skip
            rates[kind].append(n / elapsed)
            cpu[kind].append((after[0] - before[0]) * 1000 / n)
            emu_cpu[kind].append((after[1] - before[1]) * 1000 / n)
            redis_cpu[kind].append((after[2] - before[2]) * 1000 / n)
            client_cpu[kind].append((after[3] - before[3]) * 1000 / n)
    noop = rates["celery_noop"]
    ratios = {  # each round's rate over the same round's no-op rate
        kind: round(statistics.median(r / b for r, b in zip(rates[kind], noop, strict=True)), 3)
        for kind in ("json_door", "celery_door")
    }
    return {
        "ratio_to_noop_median_of_rounds": ratios,
        **{
            kind: {
                "requests_per_s": round(statistics.median(rates[kind])),
                "worker_cpu_ms_per_request": round(statistics.median(cpu[kind]), 3),
                "emulator_cpu_ms_per_request": round(statistics.median(emu_cpu[kind]), 3),
                "redis_cpu_ms_per_request": round(statistics.median(redis_cpu[kind]), 3),
                "client_cpu_ms_per_request": round(statistics.median(client_cpu[kind]), 3),
                "endpoint_requests_per_request": round(statistics.median(http[kind]), 2),
                "round_requests_per_s": [round(r) for r in rates[kind]],
                "round_worker_cpu_ms": [round(c, 3) for c in cpu[kind]],
            }
            for kind in KINDS
        },
    }


def fast_part(args: argparse.Namespace, tag: str, logs: Path) -> dict[str, Any]:
    """Latency and throughput: emulator without rate limits, budgets raised."""
    from bridge.settings import RUNPOD_BUDGETS

    port = free_port()
    emulator_env = {**os.environ, "BRIDGE_EMULATOR_API_KEYS": KEY,
                    "BRIDGE_EMULATOR_RATE_LIMITS_ENABLED": "false"}  # fmt: skip
    budgets = {op: 10_000_000 for op in RUNPOD_BUDGETS}
    bridge = Bridge(args.redis_url, f"{tag}-a", f"http://127.0.0.1:{port}", budgets=budgets)
    noop_queue, noop_host = f"{tag}-noop", f"{tag}-noop@{socket.gethostname()}"
    noop = noop_app(args.redis_url)
    kinds = Kinds(bridge, noop, noop_queue)
    emulator_cmd = [sys.executable, "-m", "bridge", "emulator", "--port", str(port),
                    "--log-level", "WARNING"]  # fmt: skip
    noop_cmd = [sys.executable, __file__, "--noop-worker", args.redis_url, noop_queue,
                noop_host, args.loglevel]  # fmt: skip
    try:
        with (
            process(emulator_cmd, emulator_env, logs / "emulator-a.log") as emulator,
            process(bridge.command(args.loglevel), bridge.env, logs / "worker-a.log") as worker,
            process(noop_cmd, dict(os.environ), logs / "noop.log") as noop_worker,
        ):
            wait_listening(port)
            wait_ready(bridge.app, worker, bridge.hostname, logs / "worker-a.log")
            wait_ready(noop, noop_worker, noop_host, logs / "noop.log")
            latency = measure_latency(kinds, args.rounds, args.singles)
            throughput = measure_throughput(
                kinds, worker.pid, noop_worker.pid, emulator.pid, args.rounds, args.requests
            )
    finally:
        cleanup(kinds.redis, [bridge.prefix, noop_queue], kinds.task_ids)
        bridge.app.close()
        noop.close()
    return {"latency": latency, "throughput": throughput, "errors": kinds.errors}


# -- 3: many long jobs in flight in one worker -------------------------------------------------


EMULATOR_TOML = """
[server]
rate_limits_enabled = true

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


def count_states(client: redis.Redis, prefix: str, ids: list[str]) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    for request_id in ids:
        pipe.hget(f"{prefix}:req:{request_id}", "state")
    counts: dict[str, int] = {}
    for state in pipe.execute():
        name = state.decode() if state else "missing"
        counts[name] = counts.get(name, 0) + 1
    return counts


def inflight_part(args: argparse.Namespace, tag: str, logs: Path) -> dict[str, Any]:
    """``args.inflight`` long jobs at the emulator's default limits and default budgets."""
    n = args.inflight
    windows = math.ceil(n / RUN_SLOTS) - 1
    expected_s = windows * RUN_SPAN_S
    job_s = args.inflight_job_s or max(60, math.ceil(expected_s) + 60)
    port = free_port()
    config = logs / "emulator-b.toml"
    config.write_text(EMULATOR_TOML.format(workers=n + 100))
    emulator_env = {**os.environ, "BRIDGE_EMULATOR_API_KEYS": KEY}
    # The route's in-flight cap (default 1000) would hold the rest back: raise it.
    bridge = Bridge(args.redis_url, f"{tag}-b", f"http://127.0.0.1:{port}", max_in_flight=n)
    client = bridge.producer.redis
    emulator_cmd = [sys.executable, "-m", "bridge", "emulator", "--port", str(port),
                    "--log-level", "WARNING", "--config", str(config)]  # fmt: skip
    stats_url = f"http://127.0.0.1:{port}/_emulator/stats/echo"
    headers = {"Authorization": f"Bearer {KEY}"}
    result: dict[str, Any] = {"jobs": n, "job_s": job_s, "expected_min_s": expected_s}
    try:
        with (
            process(emulator_cmd, emulator_env, logs / "emulator-b.log"),
            process(bridge.command(args.loglevel), bridge.env, logs / "worker-b.log") as worker,
        ):
            wait_listening(port)
            wait_ready(bridge.app, worker, bridge.hostname, logs / "worker-b.log")
            time.sleep(2)
            result["idle_rss_mb"] = round(memory_mb(worker.pid), 1)
            entries = [bridge.envelope({"sleep_ms": job_s * 1000}) for _ in range(n)]
            ids = [request_id for request_id, _ in entries]
            cpu_start, start = cpu_seconds(worker.pid), time.monotonic()
            pipe = client.pipeline(transaction=False)
            for _, fields in entries:
                pipe.xadd(bridge.settings.requests_stream, fields)
            pipe.execute()
            deadline = start + expected_s + 60
            states: dict[str, int] = {}
            while time.monotonic() < deadline:
                time.sleep(1)
                states = count_states(client, bridge.prefix, ids)
                if states.get("submitted", 0) >= n or worker.poll() is not None:
                    break
            all_in = states.get("submitted", 0) >= n
            result["all_in_flight"] = all_in
            result["seconds_to_all_in_flight"] = (
                round(time.monotonic() - start, 1) if all_in else None
            )
            result["states_at_end_of_wait"] = states
            result["rss_mb"] = round(memory_mb(worker.pid), 1)
            at_all_in = httpx.get(stats_url, headers=headers).json()
            result["responses_429_at_all_in_flight"] = at_all_in["responses_429"]
            submit_cpu = cpu_seconds(worker.pid) - cpu_start
            time.sleep(args.hold)  # steady state: every job polled under the status budget
            cpu_hold = cpu_seconds(worker.pid) - cpu_start - submit_cpu
            result["rss_after_hold_mb"] = round(memory_mb(worker.pid), 1)
            result["peak_rss_mb"] = round(memory_mb(worker.pid, "VmHWM"), 1)
            stats = httpx.get(stats_url, headers=headers).json()
            result["responses_429"] = stats["responses_429"]
            result["emulator_requests"] = stats["requests"]
            result["duplicate_submissions"] = stats["submissions"] - n
            counters = client.scan_iter(f"{bridge.prefix}:stats:*")
            result["ledger_counters"] = {
                k.decode().rsplit(":", 1)[1]: int(client.get(k) or 0) for k in counters
            }
            result["worker_cpu_s_until_all_in_flight"] = round(submit_cpu, 1)
            result["worker_cpu_percent_while_holding"] = round(cpu_hold / args.hold * 100, 1)
            result["hold_s"] = args.hold
    finally:
        cleanup(client, [bridge.prefix], [])
        bridge.app.close()
    return result


def cleanup(client: redis.Redis, prefixes: list[str], task_ids: list[str]) -> None:
    """Delete every key this run wrote: prefixed keys, queue bindings, task results."""
    keys = [f"celery-task-meta-{t}" for t in task_ids]
    keys += [f"_kombu.binding.{p}" for p in prefixes]
    for prefix in prefixes:
        keys += list(client.scan_iter(f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


# -- the report ----------------------------------------------------------------------------------


def report(fast: dict[str, Any] | None, inflight: dict[str, Any] | None) -> dict[str, Any]:
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=HERE, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip()
    if git("status", "--porcelain", "--", "../bridge").strip():
        commit += "+uncommitted"  # the figures are of the working tree
    result: dict[str, Any] = {"bench": "bridge_e2e", "commit": commit, "job_ms": JOB_MS}
    if fast is not None:
        lat, thr = fast["latency"], fast["throughput"]
        json_lat = lat["json_door"]
        result.update(fast)
        ratios = thr["ratio_to_noop_median_of_rounds"]
        result["ratio_json_door_to_noop_rps"] = ratios["json_door"]
        result["ratio_celery_door_to_noop_rps"] = ratios["celery_door"]
        result["targets"] = {
            "latency_p50_le_100ms": json_lat["p50_ms"] <= 100,
            "latency_p99_le_250ms": json_lat["p99_ms"] <= 250,
            "json_door_throughput_ge_1x_noop": result["ratio_json_door_to_noop_rps"] >= 1.0,
            "worker_cpu_le_2ms_json_door": thr["json_door"]["worker_cpu_ms_per_request"] <= 2,
            "worker_cpu_le_2ms_celery_door": thr["celery_door"]["worker_cpu_ms_per_request"] <= 2,
        }
    if inflight is not None:
        result["inflight"] = inflight
        targets = result.setdefault("targets", {})
        targets["inflight_all_held"] = inflight.get("all_in_flight", False)
        targets["inflight_rss_le_300mb"] = inflight.get("peak_rss_mb", 1e9) <= 300
        targets["inflight_zero_429"] = inflight.get("responses_429", 1) == 0
    return result


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    redis_url = os.environ.get("BRIDGE_REDIS_URL", "redis://127.0.0.1:6379/0")
    parser.add_argument("--redis-url", default=redis_url)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=40, help="latency: requests per round")
    parser.add_argument("--requests", type=int, default=1000, help="throughput: burst size")
    parser.add_argument("--inflight", type=int, default=2000, help="long jobs held (0: skip)")
    parser.add_argument(
        "--inflight-job-s", type=int, default=0, help="their length [default: 60 s, or more]"
    )
    parser.add_argument("--hold", type=float, default=10.0, help="seconds held once in flight")
    parser.add_argument("--skip-fast", action="store_true", help="only the in-flight part")
    parser.add_argument("--loglevel", default="INFO", help="workers' log level")
    parser.add_argument("--logs", type=Path, default=None, help="keep the logs in this folder")
    args = parser.parse_args()

    tag = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bridge-e2e-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        fast = None if args.skip_fast else fast_part(args, tag, logs)
        inflight = inflight_part(args, tag, logs) if args.inflight > 0 else None
    result = report(fast, inflight)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "bridge_e2e.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--noop-worker"]:
        run_noop_worker(*sys.argv[2:6])
    else:
        main()
