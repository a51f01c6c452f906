"""Real external workers: unmodified ``runpod.serverless.start`` processes against the
emulator's worker protocol (ENDPOINT_API.md §10, issue 2 point 5).

Each worker is a subprocess running a small handler module from ``workers/``,
configured only through RunPod's own ``RUNPOD_WEBHOOK_*`` variables. Every test gets
its own emulator, so the ``external`` queue is never shared between tests, and every
worker is killed (with its heartbeat child process) when the test ends.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from bridge.emulator.testing import EmulatorHandle, running_emulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

if importlib.util.find_spec("runpod") is None:  # the workers import it
    if os.environ.get("CI"):
        raise ImportError("the runpod SDK (test extra) is required in CI")
    pytest.skip("the runpod SDK is not installed", allow_module_level=True)

WORKERS = Path(__file__).parent / "workers"
ENDPOINT = "external"
T = TypeVar("T")


@dataclass
class ExternalWorker:
    """A running worker process and where its output goes."""

    pod_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The worker's JSON log lines (its format when RUNPOD_ENDPOINT_ID is set),
        without the level."""
        records = []
        for line in self.log().splitlines():
            with suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    record.pop("level", None)
                    records.append(record)
        return records

    def kill(self) -> None:
        """SIGKILL the worker's whole process group: the worker and its ping process
        (a multiprocessing child that would otherwise go on pinging for a dead pod)."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def worker_env(emu: EmulatorHandle, pod_id: str, home: Path) -> dict[str, str]:
    """The environment RunPod gives a worker pod, pointed at the emulator. Templates
    carry a query string already: the SDK appends ``&job_in_progress=…``/``&isStream=…``."""
    base = f"{emu.url}/v2/{ENDPOINT}"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    return {
        **inherited,
        "HOME": str(home),  # no ~/.runpod/config.toml key may override ours
        "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=cpu",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=cpu",
        "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu=cpu",
        "RUNPOD_AI_API_KEY": emu.api_key,
        "RUNPOD_POD_ID": pod_id,
        "RUNPOD_ENDPOINT_ID": ENDPOINT,
        "RUNPOD_SKIP_GPU_CHECK": "true",
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        # Whole seconds: the SDK divides by 1000 with //, and 0 would crash its pinger.
        "RUNPOD_PING_INTERVAL": "1000",
    }


@contextmanager
def external_worker(emu: EmulatorHandle, script: str, tmp_path: Path) -> Iterator[ExternalWorker]:
    pod_id = f"pod{uuid.uuid4().hex[:10]}"
    home = tmp_path / f"home-{pod_id}"
    home.mkdir()
    log_path = tmp_path / f"{pod_id}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(WORKERS / f"{script}.py")],
            env=worker_env(emu, pod_id, home),
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill() reaches the pinger
        )
    worker = ExternalWorker(pod_id=pod_id, proc=proc, log_path=log_path)
    try:
        yield worker
    finally:
        worker.kill()


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, worker: ExternalWorker | None = None
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` s, or at
    once if ``worker`` has exited (showing its log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if worker is not None and worker.proc.poll() is not None:
            pytest.fail(f"worker exited ({worker.proc.returncode}) before {what}:\n{worker.log()}")
        if time.monotonic() > deadline:
            log = f"\nworker log:\n{worker.log()[-4000:]}" if worker else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{log}")
        time.sleep(0.05)


@pytest.fixture
def emu() -> Iterator[EmulatorHandle]:
    """A private emulator: the ``external`` queue belongs to this test alone. Its
    job-take/job-stop hold is short because shutting the server down waits for the
    long-polls a killed worker left open."""
    with running_emulator(job_take_hold_s=2.0) as handle:
        yield handle


@pytest.fixture
def api(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{emu.base_url}/{ENDPOINT}",
        headers={"Authorization": f"Bearer {emu.api_key}"},
        timeout=10,
    ) as client:
        yield client


def submit(api: httpx.Client, job_input: dict[str, Any]) -> str:
    response = api.post("/run", json={"input": job_input})
    response.raise_for_status()
    job_id: str = response.json()["id"]
    return job_id


def status(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get(f"/status/{job_id}")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def final_status(
    api: httpx.Client, job_id: str, worker: ExternalWorker | None, timeout: float = 20
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = status(api, job_id)
        return body if body["status"] not in ("IN_QUEUE", "IN_PROGRESS") else None

    return wait_for(f"job {job_id} to end", probe, timeout, worker)


def test_plain_handler_completes_a_job(
    emu: EmulatorHandle, api: httpx.Client, tmp_path: Path
) -> None:
    with external_worker(emu, "plain_handler", tmp_path) as worker:
        job_input = {"prompt": "héllo", "n": [1, 2, 3]}
        job_id = submit(api, job_input)
        body = final_status(api, job_id, worker)
    assert body["status"] == "COMPLETED", body
    assert body["output"] == {"echo": job_input, "handled_by": "plain_handler"}
    assert body["workerId"] == worker.pod_id
    assert isinstance(body["delayTime"], int)
    assert isinstance(body["executionTime"], int)


def test_streaming_handler_chunks_arrive_once_in_order(
    emu: EmulatorHandle, api: httpx.Client, tmp_path: Path
) -> None:
    expected = [{"i": k} for k in range(5)]
    with external_worker(emu, "stream_handler", tmp_path) as worker:
        job_id = submit(api, {"n": len(expected), "interval_ms": 150})
        received: list[Any] = []
        polls = 0

        def drain() -> bool:
            # ?wait= holds until new chunks arrive; ends on the SDK's own stop rule:
            # a final status together with an empty stream.
            nonlocal polls
            response = api.get(f"/stream/{job_id}", params={"wait": 1000})
            response.raise_for_status()
            body = response.json()
            polls += 1
            received.extend(chunk["output"] for chunk in body["stream"])
            return body["status"] not in ("IN_QUEUE", "IN_PROGRESS") and not body["stream"]

        wait_for(f"the stream of {job_id} to end", drain, 20, worker)
        body = status(api, job_id)
    assert received == expected
    assert polls > 2, "chunks should have come in as the handler yielded them"
    assert body["status"] == "COMPLETED", body
    # The worker was started with return_aggregate_stream: /status has the aggregate.
    assert body["output"] == expected


def test_cancel_stops_the_running_handler(
    emu: EmulatorHandle, api: httpx.Client, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with external_worker(emu, "slow_handler", tmp_path) as worker:
        job_id = submit(api, {"dir": str(first), "ticks": 400, "interval_ms": 50})
        wait_for("the handler to tick", lambda: (first / "tick-2").exists(), 20, worker)

        response = api.post(f"/cancel/{job_id}")
        assert response.status_code == 200
        assert response.json() == {"id": job_id, "status": "CANCELLED"}

        # The worker hears about it on its job-stop long-poll and cancels the task:
        # the handler sees CancelledError and leaves its marker.
        marker = first / "cancelled"
        wait_for("the handler to be cancelled", marker.exists, 10, worker)
        assert marker.read_text() == job_id
        ticks = sorted(first.glob("tick-*"))
        assert {"requestId": job_id, "message": "Job stopped."} in worker.log_records()

        # Only that job was stopped: the same worker takes and finishes the next one.
        next_id = submit(api, {"dir": str(second), "ticks": 2, "interval_ms": 10})
        follow_up = final_status(api, next_id, worker)
        cancelled = status(api, job_id)
    assert follow_up["status"] == "COMPLETED", follow_up
    assert follow_up["output"] == {"ticks": 2}
    assert follow_up["workerId"] == worker.pod_id
    assert cancelled["status"] == "CANCELLED", cancelled
    assert "output" not in cancelled
    assert sorted(first.glob("tick-*")) == ticks, "the cancelled handler went on running"
    assert len(ticks) < 400


def _records(worker: ExternalWorker, job_id: str) -> list[str]:
    """The worker's log messages about ``job_id``, in order."""
    return [
        str(r.get("message"))
        for r in worker.log_records()
        if r.get("requestId") == job_id or job_id in str(r.get("message"))
    ]


def test_a_stop_for_a_job_taken_but_not_started_is_repeated_until_obeyed(
    emu: EmulatorHandle, api: httpx.Client, tmp_path: Path
) -> None:
    """Issue 11 item 4. runpod 1.12 queues a taken job and starts its task up to 100 ms
    later; a stop arriving in between finds no task and is dropped ("No in-progress job").
    The emulator keeps the stop pending and repeats it on job-stop until the worker stops
    listing the job, so the job ends CANCELLED and the worker moves on at once."""

    def cancel_when_taken(state: Any, job: Any) -> None:
        # Right after the job-take answer is written, before the worker can start it.
        if isinstance(job.input, dict) and job.input.get("cancel_on_take"):
            asyncio.get_running_loop().call_soon(emu.engine.cancel, state.id, job.id)

    emu.call(emu.engine.on_take.append, cancel_when_taken)
    with external_worker(emu, "slow_handler", tmp_path) as worker:
        workers = emu.engine.endpoint(ENDPOINT).workers
        wait_for("the worker to poll", lambda: worker.pod_id in workers, 30, worker)
        # The first stop lands in the window almost always; retry a few times if the
        # worker happened to start the task first (then this run proves nothing).
        for attempt in range(5):
            where = tmp_path / f"job{attempt}"
            where.mkdir()
            job_input = {"dir": str(where), "ticks": 600, "interval_ms": 50, "cancel_on_take": 1}
            job_id = submit(api, job_input)
            cancelled_at = time.monotonic()
            stopped = functools.partial(lambda j: "Job stopped." in _records(worker, j), job_id)
            wait_for("the worker to stop the job", stopped, 20, worker)
            stopped_after = time.monotonic() - cancelled_at
            messages = _records(worker, job_id)
            if any("No in-progress job" in m for m in messages):
                break
        else:
            pytest.fail(f"no stop ever landed before the job started:\n{worker.log()[-4000:]}")

        # The worker is free again: it takes and finishes the next job within seconds
        # (the cancelled one would have run 30 s).
        follow_dir = tmp_path / "next"
        follow_dir.mkdir()
        next_id = submit(api, {"dir": str(follow_dir), "ticks": 2, "interval_ms": 10})
        follow_up = final_status(api, next_id, worker, timeout=10)
        took = time.monotonic() - cancelled_at
        cancelled = status(api, job_id)
        pending = emu.call(lambda: dict(emu.engine.endpoint(ENDPOINT).workers[worker.pod_id].stops))
    assert stopped_after < 5, f"the repeated stop took {stopped_after:.1f} s"
    assert follow_up["status"] == "COMPLETED", follow_up
    assert follow_up["workerId"] == worker.pod_id
    assert took < 10, f"the next job ended {took:.1f} s after the cancel"
    assert cancelled["status"] == "CANCELLED", cancelled
    assert "output" not in cancelled
    assert len(list(where.glob("tick-*"))) < 100, "the cancelled handler went on running"
    assert pending == {}, "the stop stayed pending after the worker let go of the job"


@pytest.mark.parametrize("requeue", [True, False])
def test_a_killed_workers_job_is_requeued(tmp_path: Path, requeue: bool) -> None:
    """Issue 16 item 2: RunPod retries a job whose worker died; the retry count shows in
    ``/status``. With ``requeue_on_worker_loss`` off the job ends FAILED instead."""
    with (
        running_emulator(
            worker_dead_after_s=1.0,
            scale_tick_s=0.1,
            job_take_hold_s=1.0,
            requeue_on_worker_loss=requeue,
        ) as emu,
        httpx.Client(
            base_url=f"{emu.base_url}/{ENDPOINT}",
            headers={"Authorization": f"Bearer {emu.api_key}"},
            timeout=10,
        ) as api,
        external_worker(emu, "slow_handler", tmp_path) as worker,
    ):
        job_id = submit(api, {"dir": str(tmp_path), "ticks": 1000, "interval_ms": 50})
        # 30 ticks = 1.5 s of running, longer than worker_dead_after_s: a live worker's
        # pings and polls keep it (and its job) alive.
        wait_for("the handler to tick", lambda: (tmp_path / "tick-30").exists(), 20, worker)
        running = status(api, job_id)
        assert running["status"] == "IN_PROGRESS", running
        assert running["workerId"] == worker.pod_id

        worker.kill()
        killed_at = time.monotonic()
        if requeue:
            wait_for("the job to be requeued", lambda: "retries" in status(api, job_id), 10, None)
        else:
            final_status(api, job_id, worker=None, timeout=10)  # it is dead on purpose
        took = time.monotonic() - killed_at
        body = status(api, job_id)
        health = api.get("/health").json()
        api.post(f"/cancel/{job_id}")
    assert took < 5, f"the dead worker was noticed only after {took:.1f} s"
    assert health["jobs"]["inProgress"] == 0
    assert sum(health["workers"].values()) == 0, health
    if requeue:
        assert body == {"id": job_id, "retries": 1, "status": "IN_QUEUE"}, body
        assert (health["jobs"]["inQueue"], health["jobs"]["retried"]) == (1, 1)
        assert health["jobs"]["failed"] == 0
    else:
        assert body["status"] == "FAILED", body
        assert body["error"] == f"worker {worker.pod_id} stopped responding"
        assert body["workerId"] == worker.pod_id
        assert health["jobs"]["failed"] == 1


def test_an_abandoned_job_take_does_not_swallow_a_job() -> None:
    """A worker that hangs up during its job-take long-poll (it died, or its own
    timeout fired) must not be handed the next job: nobody would receive it."""
    with (
        running_emulator(job_take_hold_s=5.0) as emu,
        httpx.Client(
            base_url=f"{emu.base_url}/{ENDPOINT}",
            headers={"Authorization": emu.api_key},  # raw key, as workers send it
            timeout=10,
        ) as api,
    ):
        with pytest.raises(httpx.ReadTimeout):
            api.get("/job-take/ghost?gpu=cpu", timeout=0.3)
        # Give the server a moment to see the hang-up before a job arrives (loopback
        # FIN; a few ms in practice).
        time.sleep(0.2)
        job_id = submit(api, {"x": 1})

        started = time.monotonic()
        taken = api.get("/job-take/alive?gpu=cpu&job_in_progress=0")
        assert taken.status_code == 200, status(api, job_id)
        assert taken.json() == {"id": job_id, "input": {"x": 1}}
        assert time.monotonic() - started < 2
        assert status(api, job_id)["workerId"] == "alive"
