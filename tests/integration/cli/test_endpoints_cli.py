"""``bridge endpoints list|create|update-template|delete`` in a subprocess against the
emulator's admin API (REST v2 and GraphQL): tables by default, JSON with ``--json``,
``Error: …`` and exit 1 for what the API refuses, exit 2 for a usage error, and never
the API key in any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import bridge.runpod as runpod
from bridge.emulator.testing import EmulatorHandle

NOISE = ("Traceback", "Unclosed client session", "Unclosed connection")
TRANSPORTS = ["rest", "graphql"]


@pytest.fixture
def env(emulator: EmulatorHandle) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
    return {
        **clean,
        "RUNPOD_API_KEY": emulator.api_key,
        "RUNPOD_API_BASE_URL": emulator.url,
        "COLUMNS": "250",
    }


@pytest.fixture
def made(emulator: EmulatorHandle) -> Iterator[list[str]]:
    """Endpoint ids a test created: deleted afterwards whatever happened."""
    ids: list[str] = []
    yield ids
    existing = {
        e["id"] for e in runpod.get_endpoints(api_key=emulator.api_key, api_base_url=emulator.url)
    }
    for endpoint_id in set(ids) & existing:
        runpod.delete_endpoint(endpoint_id, api_key=emulator.api_key, api_base_url=emulator.url)


def bridge(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "endpoints", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    both = done.stdout + done.stderr
    for key in (env["RUNPOD_API_KEY"], env.get("TEST_KEY_IN_FILE")):
        assert not key or key not in both, "the API key was printed"
    assert not [n for n in NOISE if n in both], both
    return done


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def error(done: subprocess.CompletedProcess[str], says: str, code: int = 1) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    assert "Error: " in done.stderr, done.stderr
    assert says in done.stderr, done.stderr


def listed(env: dict[str, str], transport: str = "graphql") -> dict[str, dict[str, Any]]:
    endpoints = json.loads(ok(bridge(env, "list", "--json", "--transport", transport)))
    return {e["id"]: e for e in endpoints}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_create_list_update_template_delete(
    env: dict[str, str], made: list[str], transport: str
) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    out = ok(
        bridge(
            env,
            "create",
            name,
            "--template",
            "echo",
            "--gpu-ids",
            "AMPERE_16,ADA_24",
            "--workers-max",
            "2",
            "--idle-timeout",
            "7",
            "--transport",
            transport,
        )
    )
    endpoint_id = out.strip().splitlines()[-1].removeprefix("created endpoint ")
    made.append(endpoint_id)
    assert endpoint_id, out
    assert " " not in endpoint_id, out
    row = next(line for line in out.splitlines() if endpoint_id in line and name in line)
    assert "AMPERE_16,ADA_24" in row
    assert "ACTIVE" in row
    assert "QUEUE_DELAY" in row

    table = ok(bridge(env, "list", "--transport", transport))
    assert any(endpoint_id in line and name in line for line in table.splitlines()), table
    assert "endpoint(s)" in table.splitlines()[-1]
    found = listed(env)[endpoint_id]
    assert (found["name"], found["workersMax"], found["idleTimeout"]) == (name, 2, 7)
    # REST v2 makes the endpoint a template of its own from the one named (see
    # test_client_admin.py): the template is checked where GraphQL made the endpoint.
    if transport == "graphql":
        assert found["templateId"] == "echo"

    out = ok(bridge(env, "update-template", endpoint_id, "stream", "--transport", transport))
    assert f"endpoint {endpoint_id} now runs template stream" in out
    if transport == "graphql":
        assert listed(env)[endpoint_id]["templateId"] == "stream"

    out = ok(bridge(env, "delete", endpoint_id, "--yes", "--transport", transport))
    assert out.strip() == f"deleted endpoint {endpoint_id}"
    assert endpoint_id not in listed(env)


def test_json_output_is_the_admin_functions_result(env: dict[str, str], made: list[str]) -> None:
    name = f"cli-json-{uuid.uuid4().hex[:6]}"
    created = json.loads(
        ok(
            bridge(
                env,
                "create",
                name,
                "--template",
                "echo",
                "--gpu-ids",
                "AMPERE_16",
                "--json",
                "--transport",
                "graphql",
            )
        )
    )
    made.append(created["id"])
    assert set(created) == set(runpod.admin.ENDPOINT_KEYS)
    assert (created["name"], created["templateId"], created["workersMin"]) == (name, "echo", 0)
    gone = json.loads(ok(bridge(env, "delete", created["id"], "--yes", "--json")))
    assert gone == {"deleted": created["id"]}


def test_delete_asks_first(env: dict[str, str], made: list[str]) -> None:
    created = json.loads(
        ok(
            bridge(
                env,
                "create",
                f"cli-ask-{uuid.uuid4().hex[:6]}",
                "--template",
                "echo",
                "--gpu-ids",
                "AMPERE_16",
                "--json",
            )
        )
    )
    made.append(created["id"])
    refused = bridge(env, "delete", created["id"], stdin="n\n")
    assert refused.returncode == 1
    assert "Aborted" in refused.stderr
    assert created["id"] in listed(env)
    ok(bridge(env, "delete", created["id"], stdin="y\n"))
    assert created["id"] not in listed(env)


def test_what_the_admin_api_refuses_is_an_error(env: dict[str, str]) -> None:
    error(
        bridge(
            env,
            "create",
            "x",
            "--template",
            "no-such-template",
            "--gpu-ids",
            "AMPERE_16",
            "--transport",
            "graphql",
        ),
        "no-such-template",
    )
    for transport in TRANSPORTS:
        error(
            bridge(env, "delete", "no-such-endpoint", "--yes", "--transport", transport),
            "no-such-endpoint",
        )
        error(
            bridge(env, "update-template", "no-such-endpoint", "echo", "--transport", transport),
            "no-such-endpoint",
        )


def test_credentials_problems_are_errors_without_the_key(
    env: dict[str, str], tmp_path: Any
) -> None:
    error(bridge({**env, "RUNPOD_API_KEY": ""}, "list"), "no API key: set RUNPOD_API_KEY")
    wrong = {**env, "RUNPOD_API_KEY": f"wrong-key-{uuid.uuid4().hex}"}
    done = bridge(wrong, "list")  # bridge() checks this key is not printed either
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("Error: "), done.stderr
    error(
        bridge(env, "list", "--api-key-file", str(tmp_path / "missing")),
        "cannot read the API key file",
    )
    key_file = tmp_path / "key"
    key_file.write_text(env["RUNPOD_API_KEY"] + "\n", encoding="utf-8")
    from_file = {**env, "RUNPOD_API_KEY": "", "TEST_KEY_IN_FILE": env["RUNPOD_API_KEY"]}
    ok(bridge(from_file, "list", "--api-key-file", str(key_file)))
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text(wrong["RUNPOD_API_KEY"], encoding="utf-8")
    done = bridge(
        {**wrong, "TEST_KEY_IN_FILE": wrong["RUNPOD_API_KEY"]},
        "list",
        "--api-key-file",
        str(wrong_file),
        "--transport",
        "graphql",
    )
    assert done.returncode == 1, done.stdout + done.stderr


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    done = bridge(
        env,
        "create",
        "x",
        "--template",
        "echo",
        "--gpu-ids",
        "A",
        "--workers-min",
        "3",
        "--workers-max",
        "1",
    )
    error(done, "--workers-min 3 is more than --workers-max 1", code=2)
    error(bridge(env, "create", "x", "--gpu-ids", "A"), "Missing option '--template'", code=2)
    error(bridge(env, "list", "--transport", "soap"), "'soap' is not one of", code=2)
