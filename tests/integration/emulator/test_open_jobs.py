"""The emulator counts the jobs an endpoint holds at once (``open_jobs``) and the most it
ever held (``peak_open_jobs``): the independent witness of a fleet's ``max_in_flight``."""

from __future__ import annotations

import uuid

import httpx

from bridge.emulator.settings import EndpointConfig
from bridge.emulator.testing import EmulatorHandle


def test_open_and_peak_jobs_follow_creates_ends_and_retries(
    emulator: EmulatorHandle, api: httpx.Client
) -> None:
    endpoint = f"open-{uuid.uuid4().hex[:8]}"
    config = EndpointConfig(id=endpoint, name=endpoint, templateId="echo", workersMax=4)
    emulator.call(emulator.engine.add_endpoint, config)
    try:
        jobs = [api.post(f"/{endpoint}/run", json={"input": {"sleep_ms": 60_000}}).json()
                for _ in range(3)]  # fmt: skip
        assert _counts(emulator, endpoint) == (3, 3)
        api.post(f"/{endpoint}/cancel/{jobs[0]['id']}")
        assert _counts(emulator, endpoint) == (2, 3)  # the peak stays
        api.post(f"/{endpoint}/cancel/{jobs[0]['id']}")  # already final: no change
        assert _counts(emulator, endpoint) == (2, 3)
        for job in jobs[1:]:
            api.post(f"/{endpoint}/cancel/{job['id']}")
        assert _counts(emulator, endpoint) == (0, 3)
    finally:
        emulator.call(emulator.engine.delete_endpoint, endpoint)


def test_a_retried_job_is_open_again_until_it_ends_again(
    emulator: EmulatorHandle, api: httpx.Client
) -> None:
    endpoint = f"open-{uuid.uuid4().hex[:8]}"
    config = EndpointConfig(id=endpoint, name=endpoint, templateId="fail", workersMax=1)
    emulator.call(emulator.engine.add_endpoint, config)
    try:
        failing = api.post(f"/{endpoint}/runsync?wait=10000", json={"input": {}}).json()
        assert failing["status"] == "FAILED"
        assert _counts(emulator, endpoint) == (0, 1)
        assert api.post(f"/{endpoint}/retry/{failing['id']}").status_code == 200
        again = api.get(f"/{endpoint}/status-sync/{failing['id']}?wait=10000").json()
        assert again["status"] == "FAILED"
        assert _counts(emulator, endpoint) == (0, 1)  # opened by the retry, closed again
    finally:
        emulator.call(emulator.engine.delete_endpoint, endpoint)


def _counts(emulator: EmulatorHandle, endpoint: str) -> tuple[int, int]:
    stats = emulator.stats(endpoint)
    return stats["open_jobs"], stats["peak_open_jobs"]
