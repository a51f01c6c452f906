"""Seeded fault injection, deterministic operation failures and key revocation, on a
real socket (issue 9 item 4; the lead's permanent-error tests rely on the last two)."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.emulator.testing import EmulatorHandle, running_emulator

pytestmark = pytest.mark.integration

MIXED: dict[str, Any] = {"error_rate": 0.2, "drop_rate": 0.1, "rate_limit_rate": 0.1}


@pytest.fixture
def emu() -> Iterator[EmulatorHandle]:
    with running_emulator(rate_limits_enabled=False) as handle:
        yield handle


def outcomes(emu: EmulatorHandle, endpoint: str, n: int) -> list[str]:
    """What ``n`` health requests got, in order (one at a time: arrival order is fixed)."""
    seen = []
    with emu.client() as api:
        for _ in range(n):
            try:
                seen.append(str(api.get(f"/{endpoint}/health").status_code))
            except httpx.TransportError:  # the pool drops that connection and opens another
                seen.append("dropped")
    return seen


def by_kind(seen: list[str]) -> dict[str, int]:
    names = {"dropped": "dropped", "429": "rate_limited", "500": "error"}
    counts = Counter(names[s] for s in seen if s in names)
    return {k: counts.get(k, 0) for k in ("dropped", "rate_limited", "error")}


def test_a_seed_replays_the_same_faults_and_stats_count_them(emu: EmulatorHandle) -> None:
    emu.set_faults("echo", seed=11, **MIXED)
    first = outcomes(emu, "echo", 40)
    emu.set_faults("echo", seed=11, **MIXED)  # setting faults restarts the sequence
    second = outcomes(emu, "echo", 40)
    emu.set_faults("echo", seed=12, **MIXED)
    other = outcomes(emu, "echo", 40)

    assert first == second
    assert other != first
    assert set(first) == {"200", "500", "429", "dropped"}
    counted = emu.fault_counts("echo")
    expected = Counter(by_kind(first)) + Counter(by_kind(second)) + Counter(by_kind(other))
    assert {k: counted[k] for k in ("dropped", "rate_limited", "error")} == dict(expected)
    assert counted["dropped_after"] == counted["fail_op"] == 0
    assert emu.stats("echo")["faults_injected"] == sum(expected.values())


def test_the_server_seed_gives_each_endpoint_its_own_repeatable_sequence() -> None:
    runs = []
    for _ in range(2):
        with running_emulator(fault_seed=4, rate_limits_enabled=False) as emu:
            emu.set_faults("echo", **MIXED)
            emu.set_faults("stream", **MIXED)
            runs.append((outcomes(emu, "echo", 30), outcomes(emu, "stream", 30)))
    assert runs[0] == runs[1]
    echo, stream = runs[0]
    assert echo != stream


def test_dropped_after_processing_is_counted(emu: EmulatorHandle) -> None:
    emu.set_faults("echo", drop_after_rate=1.0, seed=1)
    with emu.client() as api, pytest.raises(httpx.TransportError):
        api.post("/echo/run", json={"input": {}})
    stats = emu.stats("echo")
    assert stats["submissions"] == 1
    assert stats["faults_by_kind"]["dropped_after"] == 1


# -- fail_ops: permanent errors on follow-up requests -----------------------------------


def test_fail_ops_answer_every_named_operation_with_its_status(emu: EmulatorHandle) -> None:
    with emu.client() as api:
        job = api.post("/echo/runsync", json={"input": {"v": 1}}).json()
        assert job["status"] == "COMPLETED"
        emu.fail_ops("echo", {"status": 401, "status-sync": 401, "stream": 401})
        for _ in range(3):
            for path in (f"status/{job['id']}", f"status-sync/{job['id']}", f"stream/{job['id']}"):
                reply = api.get(f"/echo/{path}")
                assert reply.status_code == 401
                assert reply.json() == {
                    "error": f"invalid API key (injected fault: every {path.split('/')[0]} "
                    "answers 401)"
                }
        # Operations not named work as before.
        assert api.post("/echo/runsync", json={"input": {"v": 2}}).json()["output"] == {"v": 2}
        assert api.get("/echo/health").status_code == 200
        assert emu.fault_counts("echo")["fail_op"] == 9

        emu.fail_ops("echo", {"status": 404, "status-sync": 404})
        gone = api.get(f"/echo/status/{job['id']}")
        assert gone.status_code == 404
        assert gone.json()["error"].startswith(f"job {job['id']!r} not found")

        emu.set_faults("echo")  # cleared
        assert api.get(f"/echo/status/{job['id']}").json()["status"] == "COMPLETED"
    assert emu.stats("echo")["requests"]["status"] == 5


def test_fail_ops_are_validated(emu: EmulatorHandle) -> None:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        emu.fail_ops("echo", {"statsu": 401})
    assert "unknown operation 'statsu'" in caught.value.response.json()["error"]


# -- revoking a key ------------------------------------------------------------------------


def test_a_revoked_key_gets_401_everywhere(emu: EmulatorHandle) -> None:
    key = emu.add_key()
    kept = emu.add_key()
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v2/echo/health", None),
        ("POST", "/v2/echo/run", {"input": {}}),
        ("POST", "/graphql", {"query": "{ myself { id } }"}),
        ("GET", "/v2/serverless", None),
        ("GET", "/v2/external/ping/{worker}", None),
        ("GET", "/_emulator/stats", None),
    ]

    def codes(secret: str) -> list[int]:
        with httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {secret}"}) as c:
            worker = f"w-{secrets.token_hex(4)}"  # a worker id belongs to the key that made it
            return [
                c.request(m, path.format(worker=worker), json=body).status_code
                for m, path, body in requests
            ]

    assert codes(key) == [200] * len(requests)
    emu.revoke_key(key)
    assert codes(key) == [401] * len(requests)
    assert codes(kept) == [200] * len(requests)
    assert codes(emu.api_key) == [200] * len(requests)


def test_revoking_needs_a_known_key_in_a_json_body(emu: EmulatorHandle) -> None:
    with httpx.Client(base_url=emu.url, headers={"Authorization": emu.api_key}) as c:
        assert c.post("/_emulator/keys/revoke", json={"key": "never-issued"}).status_code == 404
        assert c.post("/_emulator/keys/revoke", json={"nope": 1}).status_code == 400
    with emu.client() as api:
        assert api.get("/echo/health").status_code == 200  # nothing was revoked
