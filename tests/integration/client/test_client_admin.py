"""Admin functions over both transports (REST v2 and GraphQL) against the emulator."""

from __future__ import annotations

from typing import Any

import pytest

import bridge.runpod as runpod
from bridge import errors
from bridge.emulator.testing import EmulatorHandle
from bridge.runpod.admin import ENDPOINT_KEYS

pytestmark = pytest.mark.integration

TRANSPORTS = ["rest", "graphql"]


@pytest.fixture
def admin(client_emulator: EmulatorHandle) -> dict[str, Any]:
    """Explicit credentials for the admin calls (they win over any global)."""
    return {"api_key": client_emulator.api_key, "api_base_url": client_emulator.url}


def create(admin: dict[str, Any], transport: str, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "name": "admin-test",
        "template_id": "echo",
        "gpu_ids": "AMPERE_16,ADA_24",
        "workers_max": 2,
        **overrides,
    }
    return runpod.create_endpoint(**settings, transport=transport, **admin)


# REST v2 endpoint objects carry no templateId (the emulator follows RunPod's openapi since
# issue 16): over REST the template is checked where GraphQL reports it.
TEMPLATE_REPORTED = {"graphql": True, "rest": False}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_create_list_update_delete(admin: dict[str, Any], transport: str) -> None:
    # QUEUE_DELAY: REST v2 refuses an idleTimeout with REQUEST_COUNT scaling.
    created = create(admin, transport, idle_timeout=7, scaler_type="QUEUE_DELAY", scaler_value=3)
    assert set(created) == set(ENDPOINT_KEYS)
    assert created["id"]
    assert (created["name"], created["status"]) == ("admin-test", "ACTIVE")
    if TEMPLATE_REPORTED[transport]:
        assert created["templateId"] == "echo"
    assert (created["gpuIds"], created["idleTimeout"], created["workersMax"]) == (
        "AMPERE_16,ADA_24",
        7,
        2,
    )
    assert (created["scalerType"], created["scalerValue"], created["flashboot"]) == (
        "QUEUE_DELAY",
        3,
        False,
    )
    listed = {e["id"]: e for e in runpod.get_endpoints(transport=transport, **admin)}
    assert listed[created["id"]] == created

    updated = runpod.update_endpoint(
        created["id"], workers_max=6, idle_timeout=12, flashboot=True, transport=transport, **admin
    )
    assert (updated["workersMax"], updated["idleTimeout"], updated["flashboot"]) == (6, 12, True)
    assert updated["name"] == "admin-test"  # untouched settings stay

    swapped = runpod.update_endpoint_template(created["id"], "stream", transport=transport, **admin)
    if TEMPLATE_REPORTED[transport]:
        assert swapped["templateId"] == "stream"
    assert swapped["workersMax"] == 6

    runpod.delete_endpoint(created["id"], transport=transport, **admin)
    remaining = runpod.get_endpoints(transport=transport, **admin)
    assert created["id"] not in {e["id"] for e in remaining}


def test_both_transports_return_the_same_dicts(admin: dict[str, Any]) -> None:
    created = create(admin, "rest", locations="US,CZ", allowed_cuda_versions="12.1,12.2")
    try:

        def listed(transport: str) -> dict[str, dict[str, Any]]:
            # REST v2 reports no templateId, nor an idleTimeout with REQUEST_COUNT scaling
            # (it does not apply there): compare every other key.
            def comparable(e: dict[str, Any]) -> dict[str, Any]:
                unreported = {"templateId"}
                if e["scalerType"] == "REQUEST_COUNT":
                    unreported.add("idleTimeout")
                return {k: v for k, v in e.items() if k not in unreported}

            endpoints = runpod.get_endpoints(transport=transport, **admin)
            return {e["id"]: comparable(e) for e in endpoints}

        by_rest, by_graphql = listed("rest"), listed("graphql")
        assert by_rest == by_graphql
        assert by_rest[created["id"]]["locations"] == "US,CZ"
    finally:
        runpod.delete_endpoint(created["id"], transport="rest", **admin)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_values_travel_as_data_never_as_query_text(admin: dict[str, Any], transport: str) -> None:
    name = 'x") { id } mutation { deleteEndpoint(id: "echo") } #\n\\ "quoted"'
    created = create(admin, transport, name=name)
    try:
        assert created["name"] == name
        listed = runpod.get_endpoints(transport=transport, **admin)
        assert {"echo", created["id"]} <= {e["id"] for e in listed}
    finally:
        runpod.delete_endpoint(created["id"], transport=transport, **admin)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_admin_errors_are_typed(admin: dict[str, Any], transport: str) -> None:
    with pytest.raises(errors.AdminError, match="workersMin"):
        create(admin, transport, workers_min=5, workers_max=1)
    with pytest.raises(errors.NotFoundError):
        runpod.update_endpoint("no-such-endpoint", workers_max=1, transport=transport, **admin)
    bad = "rpa_BAD_ADMIN_KEY_42"
    with pytest.raises(errors.AuthenticationError) as caught:
        runpod.get_endpoints(transport=transport, api_key=bad, api_base_url=admin["api_base_url"])
    assert bad not in str(caught.value)


def test_transport_setting_and_globals(
    admin: dict[str, Any], client_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runpod, "api_key", client_emulator.api_key)
    monkeypatch.setattr(runpod, "api_base_url", client_emulator.url)
    for transport in TRANSPORTS:
        monkeypatch.setattr(runpod, "admin_transport", transport)
        assert "echo" in {e["id"] for e in runpod.get_endpoints()}
    monkeypatch.setattr(runpod, "admin_transport", "soap")
    with pytest.raises(errors.ConfigError, match="soap"):
        runpod.get_endpoints()
    with pytest.raises(TypeError, match="colour"):
        runpod.update_endpoint("echo", colour="blue", **admin)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_request_count_endpoint_is_created_without_an_idle_timeout(
    admin: dict[str, Any], transport: str
) -> None:
    # RunPod refuses an idleTimeout with REQUEST_COUNT over REST v2: the client leaves
    # the default out instead of failing every such create_endpoint call.
    created = create(admin, transport, scaler_type="REQUEST_COUNT", scaler_value=2)
    try:
        assert (created["scalerType"], created["scalerValue"]) == ("REQUEST_COUNT", 2)
    finally:
        runpod.delete_endpoint(created["id"], transport=transport, **admin)
