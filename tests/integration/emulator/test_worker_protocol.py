"""The worker protocol spoken by hand (no runpod SDK): who may act as a worker (issue 14
item 5) and the stop channel's bookkeeping (issue 11 item 4)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.emulator.settings import EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def emu() -> Iterator[EmulatorHandle]:
    """Short long-polls; ``parked`` runs the echo handler but never starts a worker, so
    its jobs wait in the queue."""
    templates = [
        TemplateConfig(id="echo", imageName="echo"),
        TemplateConfig(id="external", imageName="external"),
    ]
    endpoints = [
        EndpointConfig(id="parked", templateId="echo", workersMax=0),
        EndpointConfig(id="external", templateId="external", workersMax=0),
    ]
    with running_emulator(templates=templates, endpoints=endpoints, job_take_hold_s=0.2) as handle:
        yield handle


def worker_client(emu: EmulatorHandle, key: str | None = None) -> httpx.Client:
    """As runpod 1.12 workers speak: the raw key, no ``Bearer``."""
    return httpx.Client(
        base_url=emu.base_url, headers={"Authorization": key or emu.api_key}, timeout=10
    )


def submit(emu: EmulatorHandle, endpoint: str, job_input: dict[str, Any]) -> str:
    with emu.client() as api:
        job_id: str = api.post(f"/{endpoint}/run", json={"input": job_input}).json()["id"]
    return job_id


def status(emu: EmulatorHandle, endpoint: str, job_id: str) -> dict[str, Any]:
    with emu.client() as api:
        body: dict[str, Any] = api.get(f"/{endpoint}/status/{job_id}").json()
    return body


# -- who may act as a worker ---------------------------------------------------------------


def test_the_worker_protocol_is_served_only_on_external_endpoints(emu: EmulatorHandle) -> None:
    """Before: any key could take the jobs of an endpoint with simulated workers (and read
    their inputs), then post whatever result it liked."""
    job_id = submit(emu, "parked", {"private": "prompt"})
    with worker_client(emu) as worker:
        for path in ("job-take/thief?gpu=x", "job-stop/thief", "ping/thief"):
            reply = worker.get(f"/parked/{path}")
            assert reply.status_code == 403, (path, reply.text)
            assert "only on endpoints whose template is 'external'" in reply.json()["error"]
        forged = worker.post(f"/parked/job-done/thief/{job_id}", json={"output": "forged"})
        assert forged.status_code == 403
    assert status(emu, "parked", job_id) == {"id": job_id, "status": "IN_QUEUE"}


def test_a_worker_id_belongs_to_the_key_that_made_it(emu: EmulatorHandle) -> None:
    """Before: any key could post the result of another worker's job."""
    other = emu.add_key()
    job_id = submit(emu, "external", {"x": 1})
    with worker_client(emu) as worker, worker_client(emu, other) as intruder:
        taken = worker.get("/external/job-take/w1?gpu=x&job_in_progress=0")
        assert taken.json()["id"] == job_id
        forged = intruder.post(f"/external/job-done/w1/{job_id}", json={"output": "forged"})
        assert forged.status_code == 403
        assert "belongs to another API key" in forged.json()["error"]
        assert intruder.get("/external/job-stop/w1").status_code == 403
        assert status(emu, "external", job_id)["status"] == "IN_PROGRESS"
        done = worker.post(f"/external/job-done/w1/{job_id}", content=b'{"output": 2}')
        assert done.status_code == 200  # the worker's own (form-typed) report is fine
    assert status(emu, "external", job_id)["output"] == 2


# -- the stop channel ----------------------------------------------------------------------


def stops(worker: httpx.Client, worker_id: str = "w1") -> list[str]:
    reply = worker.get(f"/external/job-stop/{worker_id}?gpu=x")
    if reply.status_code == 204:
        return []
    ids: list[str] = reply.json()["jobsToStop"]
    return ids


def test_a_stop_is_repeated_until_a_ping_stops_listing_the_job(emu: EmulatorHandle) -> None:
    job_id = submit(emu, "external", {"x": 1})
    with worker_client(emu) as worker, emu.client() as api:
        assert worker.get("/external/job-take/w1?gpu=x&job_in_progress=0").status_code == 200
        assert stops(worker) == []
        api.post(f"/external/cancel/{job_id}")
        # Sent again on every poll while the worker says it still holds the job.
        for _ in range(3):
            assert stops(worker) == [job_id]
            worker.get(f"/external/ping/w1?job_id={job_id}&runpod_version=1.12.0")
        worker.get("/external/ping/w1?runpod_version=1.12.0")  # it let go of the job
        assert stops(worker) == []
        # A late job-done for the cancelled job is accepted and changes nothing.
        late = worker.post(f"/external/job-done/w1/{job_id}?isStream=false", json={"output": 1})
        assert late.status_code == 200
    assert status(emu, "external", job_id) == {
        "delayTime": status(emu, "external", job_id)["delayTime"],
        "executionTime": status(emu, "external", job_id)["executionTime"],
        "id": job_id,
        "status": "CANCELLED",
        "workerId": "w1",
    }


def test_a_stop_ends_when_the_worker_reports_the_job_or_asks_for_work(
    emu: EmulatorHandle,
) -> None:
    first, second = submit(emu, "external", {"n": 1}), submit(emu, "external", {"n": 2})
    with worker_client(emu) as worker, emu.client() as api:
        batch = worker.get("/external/job-take-batch/w1?gpu=x&batch_size=2&job_in_progress=0")
        assert [job["id"] for job in batch.json()] == [first, second]
        api.post(f"/external/cancel/{first}")
        api.post(f"/external/cancel/{second}")
        assert sorted(stops(worker)) == sorted([first, second])
        # It ran the first to its end anyway (the stop came too early): that report ends
        # the first stop; asking for work holding nothing ends the second.
        assert worker.post(f"/external/job-done/w1/{first}", json={"output": 1}).status_code == 200
        assert stops(worker) == [second]
        worker.get("/external/job-take/w1?gpu=x&job_in_progress=0")
        assert stops(worker) == []
    assert status(emu, "external", first)["status"] == "CANCELLED"


def test_a_retried_job_taken_again_is_not_stopped_by_its_old_stop(emu: EmulatorHandle) -> None:
    def pending() -> list[str]:
        return emu.call(lambda: list(emu.engine.endpoint("external").workers["w1"].stops))

    with worker_client(emu) as worker, emu.client() as api:
        # Each run may take 2 s: the first times out, the second is checked well before.
        run = {"input": {}, "policy": {"executionTimeout": 2000}}
        job_id = api.post("/external/run", json=run).json()["id"]
        assert worker.get("/external/job-take/w1?gpu=x").json()["id"] == job_id
        wait_until(lambda: status(emu, "external", job_id)["status"] == "TIMED_OUT")
        assert pending() == [job_id]  # the timed-out run is told to stop
        assert api.post(f"/external/retry/{job_id}").json()["status"] == "IN_QUEUE"
        assert worker.get("/external/job-take/w1?gpu=x").json()["id"] == job_id
        assert pending() == []  # the new run is not
        done = worker.post(f"/external/job-done/w1/{job_id}", json={"output": "second"})
        assert done.status_code == 200
    assert status(emu, "external", job_id)["output"] == "second"


def test_a_worker_that_reports_itself_unhealthy_gets_no_more_jobs(emu: EmulatorHandle) -> None:
    """Issue 16 item 2: runpod-python pings ``status=unhealthy`` when a fitness check
    fails, then exits; the platform gives such a worker no job, and the job waits."""
    job_id = submit(emu, "external", {"k": 1})
    with worker_client(emu) as worker:
        worker.get("/external/ping/sick", params={"status": "unhealthy", "check": "gpu"})
        taken = worker.get("/external/job-take/sick", params={"job_in_progress": "0"})
        health = worker.get("/external/health").json()
    assert taken.status_code == 204
    assert status(emu, "external", job_id)["status"] == "IN_QUEUE"
    assert (health["workers"]["unhealthy"], health["jobs"]["inQueue"]) == (1, 1)
