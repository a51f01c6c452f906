"""Points 2 and 3 of the emulator issue: the job lifecycle and the handler contract."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import emulator_test_handlers as th
import httpx
import pytest

from bridge.emulator.settings import EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator, wait_until


def final(api: httpx.Client, endpoint: str, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = api.get(f"/{endpoint}/status-sync/{job_id}?wait=10000").json()
    return body


@pytest.fixture(scope="module")
def custom() -> Iterator[EmulatorHandle]:
    """An emulator with short retention and test handlers on its allow-list."""
    handlers = {
        "cancellable": "emulator_test_handlers:wait_until_cancelled",
        "syncgen": "emulator_test_handlers:sync_chunks",
        "broken": "no_such_module:handler",
    }
    templates = [
        TemplateConfig(id=name, imageName=name)
        for name in ("echo", "cancellable", "syncgen", "broken", "external")
    ]
    fast: dict[str, Any] = {"workersMax": 10, "scalerType": "REQUEST_COUNT", "scalerValue": 1}
    endpoints = [
        EndpointConfig(id="echo", templateId="echo", **fast),
        EndpointConfig(id="cancellable", templateId="cancellable", **fast),
        EndpointConfig(id="syncgen", templateId="syncgen", **fast),
        EndpointConfig(id="broken", templateId="broken", **fast),
        EndpointConfig(id="external", templateId="external", workersMax=0),
        EndpointConfig(id="short", templateId="echo", executionTimeoutMs=100, **fast),
    ]
    with running_emulator(
        handlers=handlers,
        templates=templates,
        endpoints=endpoints,
        run_retention_s=0.3,
        runsync_retention_s=0.3,
    ) as handle:
        yield handle


@pytest.fixture
def capi(custom: EmulatorHandle) -> Iterator[httpx.Client]:
    with custom.client() as client:
        yield client


def test_failed_handler_error_is_clear(api: httpx.Client) -> None:
    body = api.post("/fail/runsync", json={"input": {"message": "bad prompt"}}).json()
    assert body["status"] == "FAILED"
    error = json.loads(body["error"])
    assert error["error_message"] == "bad prompt"
    assert "output" not in body


def test_returned_error_fails_the_job(api: httpx.Client) -> None:
    body = api.post("/echo/runsync", json={"input": {"error": "model refused"}}).json()
    assert (body["status"], body["error"]) == ("FAILED", "model refused")


def test_progress_update_shows_while_running(api: httpx.Client) -> None:
    job = api.post("/echo/run", json={"input": {"progress": "1/3", "sleep_ms": 400}}).json()
    wait_until(lambda: api.get(f"/echo/status/{job['id']}").json().get("output") == "1/3")
    assert api.get(f"/echo/status/{job['id']}").json()["status"] == "IN_PROGRESS"
    assert final(api, "echo", job["id"])["output"] == {"progress": "1/3", "sleep_ms": 400}


def test_cancel_queued_job_never_runs(api: httpx.Client, emulator: EmulatorHandle) -> None:
    job = api.post("/external/run", json={"input": {}}).json()
    assert api.post(f"/external/cancel/{job['id']}").json() == {
        "id": job["id"],
        "status": "CANCELLED",
    }
    status = api.get(f"/external/status/{job['id']}").json()
    assert status["status"] == "CANCELLED"
    assert "workerId" not in status


def test_cancel_running_job_cancels_its_handler(capi: httpx.Client) -> None:
    job = capi.post("/cancellable/run", json={"input": {}}).json()
    assert th.started(job["id"]).wait(10)
    assert capi.post(f"/cancellable/cancel/{job['id']}").json()["status"] == "CANCELLED"
    wait_until(lambda: job["id"] in th.CANCELLED)
    body = capi.get(f"/cancellable/status/{job['id']}").json()
    assert body["status"] == "CANCELLED"
    assert "executionTime" in body
    wait_until(lambda: capi.get("/cancellable/health").json()["jobs"]["inProgress"] == 0)


def test_cancel_final_job_answers_current_state_unchanged(api: httpx.Client) -> None:
    job = api.post("/echo/runsync", json={"input": {"v": 1}}).json()
    assert api.post(f"/echo/cancel/{job['id']}").json() == {"id": job["id"], "status": "COMPLETED"}
    assert api.get(f"/echo/status/{job['id']}").json()["output"] == {"v": 1}


def test_execution_timeout_ends_timed_out(capi: httpx.Client) -> None:
    job = capi.post("/short/run", json={"input": {"sleep_ms": 5000}}).json()
    assert final(capi, "short", job["id"])["status"] == "TIMED_OUT"


def test_policy_execution_timeout_overrides_endpoint(api: httpx.Client) -> None:
    body = {"input": {"sleep_ms": 5000}, "policy": {"executionTimeout": 100}}
    job = api.post("/echo/run", json=body).json()
    assert final(api, "echo", job["id"])["status"] == "TIMED_OUT"


def test_ttl_deletes_job_then_404(api: httpx.Client) -> None:
    job = api.post("/external/run", json={"input": {}, "policy": {"ttl": 150}}).json()
    assert api.get(f"/external/status/{job['id']}").status_code == 200
    wait_until(lambda: api.get(f"/external/status/{job['id']}").status_code == 404)
    assert "not found" in api.get(f"/external/status/{job['id']}").json()["error"]


def test_retention_then_404(capi: httpx.Client) -> None:
    job = capi.post("/echo/runsync", json={"input": {}}).json()
    assert job["status"] == "COMPLETED"
    wait_until(lambda: capi.get(f"/echo/status/{job['id']}").status_code == 404)


def test_retry_only_from_failed_or_timed_out(capi: httpx.Client) -> None:
    job = capi.post("/short/run", json={"input": {"sleep_ms": 5000}}).json()
    assert final(capi, "short", job["id"])["status"] == "TIMED_OUT"
    assert capi.post(f"/short/retry/{job['id']}").json() == {"id": job["id"], "status": "IN_QUEUE"}
    again = final(capi, "short", job["id"])
    assert (again["status"], again["retries"]) == ("TIMED_OUT", 1)
    assert capi.get("/short/health").json()["jobs"]["retried"] == 1
    done = capi.post("/echo/runsync", json={"input": {}}).json()
    refused = capi.post(f"/echo/retry/{done['id']}")
    assert refused.status_code == 400
    assert "only FAILED or TIMED_OUT" in refused.json()["error"]


def test_sync_generator_streams_and_default_output_is_empty_list(capi: httpx.Client) -> None:
    job = capi.post("/syncgen/run", json={"input": {"n": 5}}).json()
    body = final(capi, "syncgen", job["id"])
    assert (body["status"], body["output"]) == ("COMPLETED", [])
    chunks = capi.get(f"/syncgen/stream/{job['id']}").json()["stream"]
    assert [c["output"] for c in chunks] == [f"chunk-{k}" for k in range(5)]


def test_a_handler_that_cannot_load_crash_loops_and_its_jobs_stay_queued(
    custom: EmulatorHandle, capi: httpx.Client
) -> None:
    """Issue 16 item 2: as on RunPod, a worker whose handler cannot load crashes at start
    and restarts; after ``crash_loop_limit`` (3) crashes it is unhealthy, and the job is
    not failed: it waits IN_QUEUE. A new template brings a healthy worker."""
    job = capi.post("/broken/run", json={"input": {"k": 1}}).json()

    def unhealthy() -> bool:
        return bool(capi.get("/broken/health").json()["workers"]["unhealthy"] == 1)

    wait_until(unhealthy, timeout=30)
    assert capi.get(f"/broken/status/{job['id']}").json() == {"id": job["id"], "status": "IN_QUEUE"}
    [worker] = custom.workers("broken")
    assert (worker["state"], worker["crashes"]) == ("unhealthy", 3)
    assert "cannot load handler 'no_such_module:handler'" in worker["error"]
    assert custom.stats("broken")["worker_crashes"] == 3
    assert capi.get("/broken/health").json()["jobs"]["failed"] == 0

    custom.call(lambda: custom.engine.update_endpoint("broken", templateId="echo"))
    done = final(capi, "broken", job["id"])
    custom.call(lambda: custom.engine.update_endpoint("broken", templateId="broken"))
    assert (done["status"], done["output"]) == ("COMPLETED", {"k": 1})


def test_health_counts_completed_failed_and_queue(capi: httpx.Client) -> None:
    before = capi.get("/echo/health").json()["jobs"]
    capi.post("/echo/runsync", json={"input": {}})
    capi.post("/echo/runsync", json={"input": {"error": "x"}})
    ids = [capi.post("/external/run", json={"input": {}}).json()["id"] for _ in range(2)]
    after = capi.get("/echo/health").json()["jobs"]
    assert after["completed"] == before["completed"] + 1
    assert after["failed"] == before["failed"] + 1
    assert capi.get("/external/health").json()["jobs"]["inQueue"] == 2
    for job_id in ids:
        capi.post(f"/external/cancel/{job_id}")
