"""Issue 16 items 1 and 3: a worker's result as RunPod treats it, for simulated workers
(whose handlers the emulator runs like runpod-python 1.12's worker) and for external ones
(speaking the worker protocol by hand here).

Sources: runpod-python 1.12 ``rp_job.py`` (run_job, handle_job, run_job_generator),
``rp_tips.py`` and issue #309 (a result over ~20 MB: job-done 400, job COMPLETED without
output), issue #299 (a dict ``error``: COMPLETED without output), RunPod's operation
reference (a stream chunk over 1 MB is split into several).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.emulator.settings import EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
FAST: dict[str, Any] = {"workersMax": 10, "scalerType": "REQUEST_COUNT", "scalerValue": 1}


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorHandle]:
    """Default limits (20 MiB results, 1 MiB chunks) and the test handlers."""
    handlers = {
        "result": "emulator_test_handlers:result_of_input",
        "big": "emulator_test_handlers:big_output",
        "chunks": "emulator_test_handlers:big_chunks",
    }
    names = [*handlers, "external"]
    templates = [TemplateConfig(id=name, imageName=name) for name in names]
    endpoints = [
        EndpointConfig(id=name, templateId=name, coldStartMs=0, **FAST) for name in handlers
    ]
    endpoints.append(EndpointConfig(id="external", templateId="external", workersMax=0))
    with running_emulator(
        handlers=handlers, templates=templates, endpoints=endpoints, job_take_hold_s=0.2
    ) as handle:
        yield handle


@pytest.fixture(scope="module")
def api(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    with emu.client() as client:
        yield client


def runsync(api: httpx.Client, endpoint: str, job_input: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/{endpoint}/runsync", json={"input": job_input})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] in ("COMPLETED", "FAILED"), body
    return body


def shown(body: dict[str, Any]) -> dict[str, Any]:
    """What ``/status`` says of the job's result: status, output, error."""
    return {k: body[k] for k in ("status", "output", "error") if k in body}


# -- item 3: the handler's return value, case by case -------------------------------------------


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        pytest.param({"a": 1}, {"status": "COMPLETED", "output": {"a": 1}}, id="dict"),
        pytest.param({}, {"status": "COMPLETED"}, id="empty-dict"),
        pytest.param(None, {"status": "COMPLETED", "output": None}, id="none"),
        pytest.param(False, {"status": "COMPLETED", "output": False}, id="false"),
        pytest.param("done", {"status": "COMPLETED", "output": "done"}, id="string"),
        pytest.param({"error": "boom"}, {"status": "FAILED", "error": "boom"}, id="error"),
        pytest.param({"error": "boom", "partial": 1},
                     {"status": "FAILED", "output": {"partial": 1}, "error": "boom"},
                     id="error-with-the-rest"),
        pytest.param({"output": 3, "error": "e"},
                     {"status": "FAILED", "output": {"output": 3}, "error": "e"},
                     id="output-key-is-not-unwrapped"),
        pytest.param({"error": None, "k": 1}, {"status": "COMPLETED", "output": {"k": 1}},
                     id="error-none-does-not-fail"),
        pytest.param({"error": None}, {"status": "COMPLETED"}, id="error-none-alone"),
        pytest.param({"error": ""}, {"status": "COMPLETED"}, id="error-empty-string"),
        pytest.param({"error": 0, "k": 1}, {"status": "COMPLETED", "output": {"k": 1}},
                     id="error-zero"),
        pytest.param({"error": {"code": 7}, "k": 1}, {"status": "COMPLETED"},
                     id="error-dict-completes-without-output"),
        pytest.param({"refresh_worker": True, "k": 1}, {"status": "COMPLETED", "output": {"k": 1}},
                     id="refresh-worker-is-not-output"),
    ],
)  # fmt: skip
def test_a_return_value_becomes_the_job_result_as_on_runpod(
    api: httpx.Client, returned: Any, expected: dict[str, Any]
) -> None:
    assert shown(runsync(api, "result", {"result": returned})) == expected


def test_refresh_worker_gives_the_next_job_a_fresh_worker(api: httpx.Client) -> None:
    first = runsync(api, "result", {"result": {"refresh_worker": True, "n": 1}})
    second = runsync(api, "result", {"result": {"n": 2}})
    assert first["workerId"] != second["workerId"]


# -- item 1: oversized results and chunks ------------------------------------------------------


def test_a_result_over_20_mib_completes_without_output(
    emu: EmulatorHandle, api: httpx.Client
) -> None:
    before = emu.stats("big")["results_refused"]
    too_big = runsync(api, "big", {"bytes": 21 * MIB})
    assert shown(too_big) == {"status": "COMPLETED"}
    assert emu.stats("big")["results_refused"] == before + 1
    fits = runsync(api, "big", {"bytes": 19 * MIB})
    assert len(fits["output"]) == 19 * MIB


def test_a_chunk_over_1_mib_is_split_not_dropped(api: httpx.Client) -> None:
    size = 5 * MIB // 2
    job = api.post("/chunks/run", json={"input": {"bytes": size}}).json()
    outputs: list[Any] = []
    while True:
        body = api.get(f"/chunks/stream/{job['id']}", params={"wait": 10_000}).json()
        outputs.extend(chunk["output"] for chunk in body["stream"])
        if body["status"] == "COMPLETED" and not body["stream"]:
            break
    # Each piece's JSON (its quotes too) fits in 1 MiB; joined they are the chunk.
    piece = MIB - 2
    assert [len(o) for o in outputs[:-1]] == [piece, piece, size - 2 * piece]
    assert "".join(outputs[:-1]) == "y" * size
    assert outputs[-1] == "end"


# -- the same rules for an external worker (the worker protocol spoken by hand) ---------------


@pytest.fixture
def worker(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    """A worker as runpod 1.12 speaks: the raw key, JSON sent as a form."""
    headers = {"Authorization": emu.api_key, "Content-Type": "application/x-www-form-urlencoded"}
    with httpx.Client(base_url=f"{emu.base_url}/external", headers=headers, timeout=30) as client:
        yield client


def take(api: httpx.Client, worker: httpx.Client, worker_id: str) -> str:
    job_id: str = api.post("/external/run", json={"input": {}}).json()["id"]
    taken = worker.get(f"/job-take/{worker_id}", params={"job_in_progress": "0"})
    assert taken.json()["id"] == job_id
    return job_id


def test_an_external_workers_oversized_result_is_refused_and_the_job_completes(
    api: httpx.Client, worker: httpx.Client
) -> None:
    job_id = take(api, worker, "big-result")
    body = json.dumps({"output": "z" * (20 * MIB + 1)})
    done = worker.post(f"/job-done/big-result/{job_id}", params={"isStream": "false"}, content=body)
    assert done.status_code == 400, done.text
    assert "exceeds the 20971520-byte limit" in done.json()["error"]
    assert api.get(f"/external/status/{job_id}").json()["status"] == "COMPLETED"
    assert "output" not in api.get(f"/external/status/{job_id}").json()


def test_an_external_workers_dict_error_is_refused_and_the_job_completes(
    api: httpx.Client, worker: httpx.Client
) -> None:
    job_id = take(api, worker, "dict-error")
    body = json.dumps({"output": {"k": 1}, "error": {"code": 7}})
    done = worker.post(f"/job-done/dict-error/{job_id}", params={"isStream": "false"}, content=body)
    assert done.status_code == 400
    assert shown(api.get(f"/external/status/{job_id}").json()) == {"status": "COMPLETED"}


def test_an_external_workers_error_and_output_fail_the_job_keeping_the_output(
    api: httpx.Client, worker: httpx.Client
) -> None:
    job_id = take(api, worker, "err-out")
    body = json.dumps({"output": {"partial": 1}, "error": "boom"})
    assert worker.post(f"/job-done/err-out/{job_id}", content=body).status_code == 200
    assert shown(api.get(f"/external/status/{job_id}").json()) == {
        "status": "FAILED",
        "output": {"partial": 1},
        "error": "boom",
    }


def test_an_external_workers_big_chunk_is_split(api: httpx.Client, worker: httpx.Client) -> None:
    job_id = take(api, worker, "big-chunk")
    chunk = json.dumps({"output": "w" * (MIB + 10)})
    sent = worker.post(f"/job-stream/big-chunk/{job_id}", content=chunk)
    assert sent.status_code == 200, sent.text
    stream = api.get(f"/external/stream/{job_id}", params={"wait": 0}).json()["stream"]
    assert [len(c["output"]) for c in stream] == [MIB - 2, 12]  # JSON quotes count
    worker.post(f"/job-done/big-chunk/{job_id}", params={"isStream": "true"}, content="{}")
