"""Point 4 of the emulator issue: simulated workers, autoscaling, idle timeout, cold start."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.emulator.settings import EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator, wait_until


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorHandle]:
    endpoints = [
        EndpointConfig(
            id="rc", templateId="echo", scalerType="REQUEST_COUNT", scalerValue=1,
            workersMax=3, idleTimeout=0.3, coldStartMs=0,
        ),
        EndpointConfig(
            id="qd", templateId="echo", scalerType="QUEUE_DELAY", scalerValue=0.2,
            workersMax=4, idleTimeout=0.3, flashboot=False, coldStartMs=150,
        ),
        EndpointConfig(id="warm", templateId="echo", workersMin=2, workersMax=3, coldStartMs=0),
        EndpointConfig(id="low", templateId="echo", workersMax=2, coldStartMs=0),
    ]  # fmt: skip
    with running_emulator(
        templates=[TemplateConfig(id="echo", imageName="echo")],
        endpoints=endpoints,
        scale_tick_s=0.05,
    ) as handle:
        yield handle


@pytest.fixture
def api(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    with emu.client() as client:
        yield client


def workers(api: httpx.Client, endpoint: str) -> dict[str, int]:
    result: dict[str, int] = api.get(f"/{endpoint}/health").json()["workers"]
    return result


def submit(api: httpx.Client, endpoint: str, count: int, **job_input: Any) -> list[str]:
    return [
        api.post(f"/{endpoint}/run", json={"input": job_input}).json()["id"] for _ in range(count)
    ]


def test_request_count_scales_to_max_and_back_down(api: httpx.Client) -> None:
    ids = submit(api, "rc", 6, sleep_ms=400)
    wait_until(lambda: workers(api, "rc")["running"] == 3)
    health = api.get("/rc/health").json()
    assert (health["jobs"]["inProgress"], health["jobs"]["inQueue"]) == (3, 3)
    for job_id in ids:
        assert api.get(f"/rc/status-sync/{job_id}?wait=10000").json()["status"] == "COMPLETED"
    assert sum(workers(api, "rc").values()) <= 3
    wait_until(lambda: sum(workers(api, "rc").values()) == 0)  # idle timeout, min 0


def test_queue_delay_adds_workers_after_cold_start(api: httpx.Client) -> None:
    ids = submit(api, "qd", 8, sleep_ms=600)
    wait_until(lambda: workers(api, "qd")["initializing"] >= 1)
    wait_until(lambda: workers(api, "qd")["running"] >= 2)  # the queue waited > 0.2 s
    seen_max = 0
    for job_id in ids:
        seen_max = max(seen_max, sum(workers(api, "qd").values()))
        api.get(f"/qd/status-sync/{job_id}?wait=10000")
    assert 2 <= seen_max <= 4


def test_workers_min_are_kept_warm(api: httpx.Client) -> None:
    wait_until(lambda: workers(api, "warm")["idle"] == 2)
    job = api.post("/warm/runsync", json={"input": {"x": 1}}).json()
    assert job["delayTime"] < 100
    assert workers(api, "warm")["idle"] == 2


def test_low_priority_does_not_trigger_scale_up(api: httpx.Client, emu: EmulatorHandle) -> None:
    body = {"input": {}, "policy": {"lowPriority": True}}
    low = api.post("/low/run", json=body).json()
    # Give the scaler several ticks (scale_tick_s = 0.05): no worker may start.
    for _ in range(10):
        assert api.get(f"/low/status-sync/{low['id']}?wait=30").json()["status"] == "IN_QUEUE"
        assert sum(workers(api, "low").values()) == 0
    normal = api.post("/low/run", json={"input": {}}).json()
    for job_id in (low["id"], normal["id"]):
        assert api.get(f"/low/status-sync/{job_id}?wait=10000").json()["status"] == "COMPLETED"


def test_lowering_workers_max_applies_live(api: httpx.Client, emu: EmulatorHandle) -> None:
    emu.call(lambda: emu.engine.update_endpoint("rc", workersMax=1))
    try:
        ids = submit(api, "rc", 3, sleep_ms=200)
        for _ in range(5):
            assert workers(api, "rc")["running"] <= 1
            api.get(f"/rc/status-sync/{ids[0]}?wait=50")
        for job_id in ids:
            api.get(f"/rc/status-sync/{job_id}?wait=10000")
    finally:
        emu.call(lambda: emu.engine.update_endpoint("rc", workersMax=3))
