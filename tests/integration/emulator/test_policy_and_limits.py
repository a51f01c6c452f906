"""Issue 16 items 4 and 7, and the ``runpod`` profile: rate limits and concurrency caps per
user per endpoint, job TTL and retention, policy bounds, the account's worker cap.

Sources: RunPod's send-requests page ("Rate limits and quotas": per endpoint, run
200 / runsync 400 / status 400 / stream 400 / cancel 20 concurrent; "Execution policies":
ttl default 24 h, at least 10 s, at most a week; executionTimeout over 5 s), endpoint
configurations (``/status?ttl=``), ENDPOINT_API.md §14 (a new account's cap of 5 workers).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from bridge.emulator.settings import EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator, wait_until

pytestmark = pytest.mark.integration

WEEK_MS = 7 * 24 * 3600 * 1000


def run(api: httpx.Client, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    return api.post(f"/{endpoint}/run", json=body)


# -- item 4: limits are the account's, and capped in concurrency ----------------------------------


def test_rate_limits_are_per_user_so_every_key_shares_them() -> None:
    with running_emulator(rate_limits={"run": 3}) as emu:
        other = emu.add_key()
        with emu.client() as mine, emu.client(other) as theirs:
            codes = [
                run(client, "external", {"input": {}}).status_code
                for client in (mine, theirs, mine, theirs)
            ]
    assert codes == [200, 200, 200, 429]


def test_concurrency_caps_refuse_what_is_past_the_cap() -> None:
    caps = {"status-sync": 2, "cancel": 20}
    with (
        running_emulator(concurrency_limits_enabled=True, concurrency_limits=caps) as emu,
        emu.client() as api,
        emu.client(emu.add_key()) as other,
        ThreadPoolExecutor(2) as pool,
    ):
        job = run(api, "external", {"input": {}}).json()["id"]
        held = [
            pool.submit(api.get, f"/external/status-sync/{job}", params={"wait": 20_000})
            for _ in range(2)
        ]
        # Counted and given its slot in one step of the server's loop: both are held now.
        wait_until(lambda: emu.stats("external")["requests"].get("status-sync") == 2)
        refused = other.get(f"/external/status-sync/{job}", params={"wait": 20_000})
        assert api.post(f"/external/cancel/{job}").status_code == 200  # not capped here
        released = [future.result(timeout=20) for future in held]
        after = api.get(f"/external/status-sync/{job}", params={"wait": 0})
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
    assert "at most 2 at once" in refused.json()["error"]
    assert [r.json()["status"] for r in released] == ["CANCELLED", "CANCELLED"]
    assert after.status_code == 200


# -- item 7: TTL, retention and the policy's bounds -----------------------------------------------


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorHandle]:
    with running_emulator(cold_start_ms=0) as handle:
        yield handle


@pytest.fixture
def api(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    with emu.client() as client:
        yield client


def lifetime_s(emu: EmulatorHandle, endpoint: str, job_id: str) -> float:
    """How long the job lives after its submission (its TTL), read from the engine."""

    def read() -> float:
        _, job = emu.engine.job(endpoint, job_id)
        return float(job.expires_at - job.created_at)

    result: float = emu.call(read)
    return result


def gone(api: httpx.Client, endpoint: str, job_id: str) -> bool:
    return api.get(f"/{endpoint}/status/{job_id}").status_code == 404


def test_the_default_ttl_is_24_hours(emu: EmulatorHandle, api: httpx.Client) -> None:
    job = run(api, "external", {"input": {}}).json()["id"]
    assert lifetime_s(emu, "external", job) == pytest.approx(24 * 3600)
    api.post(f"/external/cancel/{job}")


def test_the_ttl_deletes_a_running_job_and_stops_its_handler(api: httpx.Client) -> None:
    job = run(api, "echo", {"input": {"sleep_ms": 30_000}, "policy": {"ttl": 500}}).json()["id"]
    wait_until(lambda: api.get(f"/echo/status/{job}").json().get("status") == "IN_PROGRESS")
    wait_until(lambda: gone(api, "echo", job), timeout=10)
    wait_until(lambda: api.get("/echo/health").json()["jobs"]["inProgress"] == 0, timeout=10)


def test_retention_never_outlives_the_ttl(api: httpx.Client) -> None:
    """A finished /run result is kept 30 min, but not past the job's TTL."""
    job = run(api, "echo", {"input": {}, "policy": {"ttl": 600}}).json()["id"]
    done = api.get(f"/echo/status-sync/{job}", params={"wait": 10_000}).json()
    assert done["status"] == "COMPLETED"
    wait_until(lambda: gone(api, "echo", job), timeout=10)


def test_status_ttl_sets_the_jobs_ttl_from_now(emu: EmulatorHandle, api: httpx.Client) -> None:
    job = api.post("/echo/runsync", json={"input": {"k": 1}}).json()
    assert job["status"] == "COMPLETED"
    read = api.get(f"/echo/status/{job['id']}", params={"ttl": 300})
    assert read.json()["output"] == {"k": 1}  # the answer still carries the result
    wait_until(lambda: gone(api, "echo", job["id"]), timeout=10)
    waiting = run(api, "external", {"input": {}}).json()["id"]
    api.get(f"/external/status/{waiting}", params={"ttl": 3_600_000})
    assert lifetime_s(emu, "external", waiting) == pytest.approx(3600, abs=5)
    api.post(f"/external/cancel/{waiting}")


@pytest.mark.parametrize("ttl", ["0", "-5", "soon", str(WEEK_MS + 1)])
def test_status_ttl_must_be_a_positive_number_of_ms_up_to_a_week(
    api: httpx.Client, ttl: str
) -> None:
    job = api.post("/echo/runsync", json={"input": {}}).json()["id"]
    refused = api.get(f"/echo/status/{job}", params={"ttl": ttl})
    assert refused.status_code == 400
    assert "ttl" in refused.json()["error"]


@pytest.mark.parametrize(
    ("policy", "fast", "runpod"),
    [
        ({"ttl": 150}, 200, 400),
        ({"ttl": 9_999}, 200, 400),
        ({"ttl": 10_000}, 200, 200),
        ({"ttl": WEEK_MS}, 200, 200),
        ({"ttl": WEEK_MS + 1}, 400, 400),
        ({"executionTimeout": 100}, 200, 400),
        ({"executionTimeout": 4_999}, 200, 400),
        ({"executionTimeout": 5_000}, 200, 200),
        ({"executionTimeout": WEEK_MS + 1}, 400, 400),
    ],
)
def test_policy_bounds_by_profile(
    api: httpx.Client, runpod_api: httpx.Client, policy: dict[str, int], fast: int, runpod: int
) -> None:
    """The runpod profile enforces RunPod's lower bounds; the fast one (the default, for
    test suites) any positive value; both refuse more than 7 days."""
    codes = []
    for client in (api, runpod_api):
        reply = run(client, "external", {"input": {}, "policy": policy})
        codes.append(reply.status_code)
        if reply.status_code == 200:
            client.post(f"/external/cancel/{reply.json()['id']}")
    assert codes == [fast, runpod]


# -- the runpod profile ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runpod_emu() -> Iterator[EmulatorHandle]:
    """The runpod profile, two greedy endpoints and cold starts cut (an explicit setting
    wins over its profile)."""
    greedy: dict[str, Any] = {"scalerType": "REQUEST_COUNT", "scalerValue": 1, "workersMax": 4}
    with running_emulator(
        profile="runpod",
        cold_start_ms=0,
        flashboot_cold_start_ms=0,
        templates=[TemplateConfig(id=t, imageName=t) for t in ("echo", "external")],
        endpoints=[
            EndpointConfig(id="a", templateId="echo", **greedy),
            EndpointConfig(id="b", templateId="echo", **greedy),
            EndpointConfig(id="external", templateId="external", workersMax=0),
        ],
    ) as handle:
        yield handle


@pytest.fixture
def runpod_api(runpod_emu: EmulatorHandle) -> Iterator[httpx.Client]:
    with runpod_emu.client() as client:
        yield client


def test_the_runpod_profile_caps_the_accounts_workers_at_5(
    runpod_emu: EmulatorHandle, runpod_api: httpx.Client
) -> None:
    jobs = {
        endpoint: [
            run(runpod_api, endpoint, {"input": {"sleep_ms": 30_000}}).json()["id"]
            for _ in range(4)
        ]
        for endpoint in ("a", "b")
    }

    def workers() -> tuple[int, int]:
        health = [runpod_api.get(f"/{e}/health").json()["workers"] for e in ("a", "b")]
        return sum(h["running"] for h in health), sum(h["throttled"] for h in health)

    wait_until(lambda: workers() == (5, 3), timeout=10)
    for endpoint, ids in jobs.items():
        for job_id in ids:
            runpod_api.post(f"/{endpoint}/cancel/{job_id}")


def test_the_runpod_profile_reads_megabytes_as_decimal(runpod_api: httpx.Client) -> None:
    """10 MB for /run: 10,000,000 bytes, the stricter reading of RunPod's limit."""
    padding = "p" * (10_000_000 - len('{"input": {"p": ""}}') + 1)
    reply = runpod_api.post(
        "/external/run",
        content=f'{{"input": {{"p": "{padding}"}}}}',
        headers={"Content-Type": "application/json"},
    )
    assert reply.status_code == 413
    assert "max is 10000000" in reply.json()["error"]
