"""Public surface, credentials resolution, and the import rule of bridge.runpod."""

from __future__ import annotations

import inspect
import subprocess
import sys

import aiohttp
import pytest

import bridge.runpod as runpod
from bridge.runpod import _config
from bridge.runpod.http_client import ClientSession

KEY = "rpa_UNIT_SECRET"


def test_exported_names() -> None:
    expected = {
        "Endpoint",
        "Job",
        "AsyncioEndpoint",
        "AsyncioJob",
        "set_credentials",
        "api_key",
        "endpoint_url_base",
        "api_base_url",
        "admin_transport",
        "create_endpoint",
        "get_endpoints",
        "update_endpoint_template",
        "update_endpoint",
        "delete_endpoint",
        "http_client",
        "RetryPolicy",
        "PollPolicy",
        "FINAL_STATES",
        "Hooks",
        "Exchange",
    }
    assert set(runpod.__all__) == expected
    for name in expected:
        assert hasattr(runpod, name), name


def test_seed_signatures() -> None:
    def params(func: object) -> list[str]:
        return list(inspect.signature(func).parameters)  # type: ignore[arg-type]

    assert params(runpod.Endpoint)[:1] == ["endpoint_id"]
    assert params(runpod.Job)[:2] == ["endpoint_id", "job_id"]
    assert params(runpod.AsyncioEndpoint)[:2] == ["endpoint_id", "session"]
    assert params(runpod.AsyncioJob)[:3] == ["endpoint_id", "job_id", "session"]
    assert inspect.signature(runpod.Endpoint.run_sync).parameters["timeout"].default == 86400
    assert inspect.signature(runpod.Endpoint.health).parameters["timeout"].default == 3
    assert inspect.signature(runpod.Job.output).parameters["timeout"].default == 0
    assert inspect.signature(runpod.Job.cancel).parameters["timeout"].default == 3
    create = inspect.signature(runpod.create_endpoint).parameters
    assert list(create)[:11] == [
        "name",
        "template_id",
        "gpu_ids",
        "network_volume_id",
        "locations",
        "idle_timeout",
        "scaler_type",
        "scaler_value",
        "workers_min",
        "workers_max",
        "flashboot",
    ]
    assert [create[n].default for n in ("idle_timeout", "scaler_type", "workers_max")] == [
        5,
        "QUEUE_DELAY",
        3,
    ]
    for method in ("status", "output", "cancel", "retry"):
        assert inspect.iscoroutinefunction(getattr(runpod.AsyncioJob, method))
    assert inspect.isasyncgenfunction(runpod.AsyncioJob.stream)


def test_the_client_imports_nothing_else_from_bridge() -> None:
    code = (
        "import sys, bridge.runpod, bridge.runpod.http_client;"
        "print(sorted(m for m in sys.modules if m.startswith('bridge')"
        " and not m.startswith('bridge.runpod')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['bridge', 'bridge.errors']"


def test_explicit_arguments_win_then_globals_then_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runpod, "api_key", None)
    monkeypatch.setenv("RUNPOD_API_KEY", "from-env")
    assert _config.resolve_key(None) == _config.Secret("from-env")
    runpod.set_credentials("from-global")
    assert _config.resolve_key(None) == _config.Secret("from-global")
    assert _config.resolve_key("explicit") == _config.Secret("explicit")
    monkeypatch.delenv("RUNPOD_API_KEY")
    monkeypatch.setattr(runpod, "api_key", None)
    assert _config.resolve_key(None) is None


def test_base_urls_are_read_at_construction_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runpod, "endpoint_url_base", "http://first/v2/")
    first = runpod.Endpoint("e")
    monkeypatch.setattr(runpod, "endpoint_url_base", "http://second/v2")
    assert first.base_url == "http://first/v2"
    assert runpod.Endpoint("e").base_url == "http://second/v2"
    assert runpod.Endpoint("e", base_url="http://explicit/v2").base_url == "http://explicit/v2"
    monkeypatch.setattr(runpod, "api_base_url", None)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://admin.env")
    assert _config.resolve_api_base(None) == "http://admin.env"
    monkeypatch.delenv("RUNPOD_API_BASE_URL")
    assert _config.resolve_api_base(None) == "https://api.runpod.io"


def test_the_key_is_in_no_repr() -> None:
    secret = _config.Secret(KEY)
    assert KEY not in repr(secret)
    assert KEY not in str(secret)
    assert KEY not in f"{secret}"
    assert secret.redact(f"echo {KEY}") == "echo ********"
    endpoint = runpod.Endpoint("e", api_key=KEY)
    job = endpoint.job("j")
    for obj in (endpoint, job, runpod.Job("e", "j", api_key=KEY)):
        assert KEY not in repr(obj)
        assert KEY not in repr(vars(obj)) if hasattr(obj, "__dict__") else True


async def test_client_session_factory_gives_an_aiohttp_session() -> None:
    async with ClientSession() as session:
        assert isinstance(session, aiohttp.ClientSession)
        assert session.connector is not None
        assert session.connector.limit == 0
        assert session.headers["User-Agent"].startswith("bridge-runpod/")
        assert "Authorization" not in session.headers
        endpoint = runpod.AsyncioEndpoint("e", session, api_key=KEY)
        assert KEY not in repr(endpoint)
        assert KEY not in repr(vars(endpoint))
        assert KEY not in repr(endpoint.job("j"))
