"""Dockerfile, docker-compose.yml and Procfile, checked without a container engine:
every command they name exists in the package (``bridge`` sub-commands and options
through click's own parser), every environment variable they set is one the settings
read, and the configuration they assemble loads. The compose file is also validated
against the Compose Specification's JSON schema (check-jsonschema's vendored copy:
no Docker engine or compose plugin needed, so CI checks it too)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from bridge.cli import main
from bridge.emulator.settings import EmulatorSettings
from bridge.settings import BridgeSettings

ROOT = Path(__file__).resolve().parents[2]
BRIDGE_SERVICES = {"emulator", "worker", "beat", "webhooks"}
MOUNT = "/etc/bridge"  # where compose mounts ./config


def check_bridge_command(argv: list[str]) -> click.Context:
    """Parse ``bridge …`` as the CLI would (options, choices, arguments), without running
    it; fails the test when a sub-command or an option does not exist."""
    assert argv[0] == "bridge", argv
    ctx = click.Context(main, info_name="bridge")
    args = list(argv[1:])
    group: click.Group = main
    while True:
        try:
            name, command, rest = group.resolve_command(ctx, args)
            assert command is not None
            if isinstance(command, click.Group):  # our groups take no options of their own
                group, ctx, args = command, click.Context(command, ctx, str(name)), rest
                continue
            return command.make_context(str(name), rest, parent=ctx)
        except click.UsageError as exc:
            pytest.fail(f"`{' '.join(argv)}`: {exc.format_message()}")


def env_is_read(name: str, api_key_envs: set[str]) -> bool:
    """Whether the settings (or a route's ``api_key_env``) read this variable."""
    for model in (EmulatorSettings, BridgeSettings):
        prefix = str(model.model_config.get("env_prefix", ""))
        nested = model.model_config.get("env_nested_delimiter") or None
        if not name.startswith(prefix):
            continue
        field = name.removeprefix(prefix).lower()
        if field in model.model_fields or (nested and field.split(nested)[0] in model.model_fields):
            return True
    return name in api_key_envs


SET_BY_USER = {"RUNPOD_API_KEY": "a-key-from-the-shell"}
"""What a user sets for compose's required variables (``${VAR:?message}``)."""


def compose_default(value: str) -> str:
    """``${VAR:-default}`` as compose resolves it with VAR unset, ``${VAR:?message}``
    with VAR set as in :data:`SET_BY_USER`."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", lambda m: SET_BY_USER[m[1]], value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def settings_env(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment with compose defaults, the mounted config mapped back
    to this repository's config/."""
    env = {k: compose_default(str(v)) for k, v in (service.get("environment") or {}).items()}
    return {k: v.replace(MOUNT, str(ROOT / "config")) for k, v in env.items()}


# -- docker-compose.yml ------------------------------------------------------------------


def test_compose_has_every_service_with_a_health_check(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", *BRIDGE_SERVICES, "flower", "prometheus", "grafana"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_dependencies_wait_for_health_where_there_is_one(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dependency, how in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert how["condition"] in ("service_healthy", "service_started"), (name, how)
    assert services["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["emulator"] == {
        "condition": "service_healthy", "required": False,  # the emulator is dev only
    }  # fmt: skip
    assert services["beat"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_persists_its_data(compose: dict[str, Any], services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    volume, target = redis["volumes"][0].split(":")
    assert target == "/data"
    assert volume in compose["volumes"]


def test_bridge_services_run_bridge_commands_that_exist(services: dict[str, Any]) -> None:
    for name in BRIDGE_SERVICES:
        service = services[name]
        assert service["build"] == "."
        assert service["volumes"] == [f"./config:{MOUNT}:ro"]
        ctx = check_bridge_command(service["command"])
        assert ctx.info_name == name
        assert ctx.params["log_format"] == "json"
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        ping = check_bridge_command(test[1:])
        assert ping.info_name == "ping"
        assert ping.params["target"] == name


def test_every_variable_set_is_read_by_the_settings(services: dict[str, Any]) -> None:
    routes = BridgeSettings.load(ROOT / "config" / "compose.toml").routes
    key_envs = {r.api_key_env for r in routes.values() if r.api_key_env}
    for name in BRIDGE_SERVICES:
        for variable in services[name].get("environment") or {}:
            assert env_is_read(variable, key_envs), f"{name}: nothing reads {variable}"


def test_the_checker_refuses_unknown_variables() -> None:
    assert env_is_read("BRIDGE_REDIS_URL", set())
    assert env_is_read("BRIDGE_ROUTES__ECHO__MODE", set())
    assert env_is_read("BRIDGE_EMULATOR_API_KEYS", set())
    assert env_is_read("BRIDGE_EMULATOR_URL", set())  # BridgeSettings.emulator_url
    assert not env_is_read("BRIDGE_REDIS_URI", set())
    assert not env_is_read("BRIDGE_EMULATOR_APIKEYS", set())
    assert not env_is_read("RUNPOD_KEY", {"RUNPOD_API_KEY"})


def test_worker_settings_load_from_compose(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("worker", "beat", "webhooks"):
        for variable, value in settings_env(services[name]).items():
            monkeypatch.setenv(variable, value)
        settings = BridgeSettings.load()
        assert settings.redis_url == "redis://redis:6379/0"
        assert {r.base_url for r in settings.routes.values()} == {"http://emulator:8000/v2"}
        for route in settings.routes.values():  # the key: compose's secret, from a file
            assert route.api_key_file == Path("/run/secrets/", SECRET)


SECRET = "runpod_api_key"


def test_the_api_key_is_a_required_secret_never_a_default(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert compose["secrets"] == {SECRET: {"environment": "RUNPOD_API_KEY"}}
    for name in ("worker", "beat", "webhooks"):
        assert services[name]["secrets"] == [SECRET]
        assert "RUNPOD_API_KEY" not in (services[name].get("environment") or {})
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text
    assert "${RUNPOD_API_KEY:?" in text  # compose refuses to start without it


def test_dev_parts_are_a_profile_and_listen_on_loopback(services: dict[str, Any]) -> None:
    for name in ("emulator", "flower"):
        assert services[name]["profiles"] == ["dev"]
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    for name in ("worker", "beat", "webhooks", "redis"):
        assert "profiles" not in services[name], name
    assert "emulator" in services["emulator"]["environment"]["BRIDGE_EMULATOR_ALLOWED_HOSTS"]


def test_flower_is_pinned_and_refuses_to_run_without_a_password(
    services: dict[str, Any],
) -> None:
    flower = services["flower"]
    assert re.fullmatch(r"mher/flower:\d+\.\d+\.\d+", flower["image"])
    script = flower["entrypoint"][2]
    assert 'test -n "$$FLOWER_BASIC_AUTH" || ' in script
    assert "exit 1" in script
    assert flower["environment"] == {"FLOWER_BASIC_AUTH": "${FLOWER_BASIC_AUTH:-}"}


def test_production_settings_of_every_long_running_service(services: dict[str, Any]) -> None:
    for name in BRIDGE_SERVICES:
        service = services[name]
        assert service["stop_grace_period"] == "45s", name  # shutdown waits up to 30 s
        assert service["deploy"]["resources"]["limits"]["memory"], name
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_emulator_settings_load_from_compose(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = services["emulator"]
    for variable, value in settings_env(emulator).items():
        monkeypatch.setenv(variable, value)
    config = check_bridge_command(emulator["command"]).params["config_path"]
    settings = EmulatorSettings.load(str(config).replace(MOUNT, str(ROOT / "config")))
    settings.check_bind()  # listening on 0.0.0.0 needs real keys: compose sets them
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert settings.accepted_keys() == [SET_BY_USER["RUNPOD_API_KEY"]]
    _, _, container_port = emulator["ports"][0].split(":")
    assert int(container_port) == settings.port


def test_flower_watches_the_workers_broker(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert flower["image"].startswith("mher/flower:")
    command = flower["command"]
    assert command[0] == "celery"
    assert command.index("flower") > command.index(
        "--broker=" + settings_env(services["worker"])["BRIDGE_REDIS_URL"]
    )
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert not any("flower" in dep for dep in pyproject["project"]["dependencies"])


def test_webhook_receiver_listens_where_the_workers_send(services: dict[str, Any]) -> None:
    env = settings_env(services["webhooks"])
    assert env["BRIDGE_WEBHOOK_HOST"] == "0.0.0.0"
    assert env["BRIDGE_WEBHOOK_URL"] == f"http://webhooks:{env['BRIDGE_WEBHOOK_PORT']}"


def compose_spec_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    if importlib.util.find_spec("check_jsonschema") is None:
        message = "check-jsonschema is not installed (a test dependency: pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    checked = compose_spec_check(ROOT / "docker-compose.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the validator is live: a misspelt service key is refused
    text = (ROOT / "docker-compose.yml").read_text()
    assert "\n    image: redis:" in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("\n    image: redis:", "\n    imgae: redis:", 1))
    refused = compose_spec_check(broken)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "'imgae' was unexpected" in refused.stdout


# -- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_slim_and_not_root(dockerfile: list[tuple[str, str]]) -> None:
    froms = [i for i, (op, _) in enumerate(dockerfile) if op == "FROM"]
    assert len(froms) >= 2, "build tools stay in a build stage"
    final = dockerfile[froms[-1] :]
    assert re.fullmatch(r"python:\S*-slim", final[0][1].split()[0])
    users = [arg for op, arg in final if op == "USER"]
    assert users, "the final stage must not run as root"
    assert users[-1] not in ("root", "0")
    installs = " ".join(arg for op, arg in final if op == "RUN")
    assert re.search(r"pip install --no-index --find-links=\S+ bridge", installs)
    assert not re.search(r"apt-get|gcc|build-essential", installs)
    for op, arg in dockerfile:
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        if op == "ENV":
            for variable in re.findall(r"(BRIDGE_[A-Z_]+)=", arg):
                assert env_is_read(variable, set()), variable


def test_dockerfile_commands_exist(dockerfile: list[tuple[str, str]]) -> None:
    (healthcheck,) = [arg for op, arg in dockerfile if op == "HEALTHCHECK"]
    check_bridge_command(json.loads(healthcheck.split("CMD", 1)[1]))
    (cmd,) = [arg for op, arg in dockerfile if op == "CMD"]
    assert check_bridge_command(json.loads(cmd)).info_name == "worker"


# -- Procfile ----------------------------------------------------------------------------


def test_procfile_runs_every_process_with_existing_commands() -> None:
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = dict(line.split(":", 1) for line in lines if line.strip() and line[0] != "#")
    assert set(entries) == BRIDGE_SERVICES - {"emulator"}  # a development server
    assert "exactly one `beat`" in " ".join(lines)
    for name, command in entries.items():
        ctx = check_bridge_command(shlex.split(command.replace("$PORT", "5000")))
        assert ctx.info_name == name
        config = ctx.params.get("config_path")
        if config is not None:
            assert (ROOT / config).is_file()
    webhooks = check_bridge_command(shlex.split(entries["webhooks"].replace("$PORT", "5000")))
    assert (webhooks.params["host"], webhooks.params["port"]) == ("0.0.0.0", 5000)


def test_the_command_checker_refuses_what_does_not_exist() -> None:
    for argv in (["bridge", "wrker"], ["bridge", "worker", "--log-format", "xml"],
                 ["bridge", "ping", "nothing"], ["bridge", "dlq", "lst"]):  # fmt: skip
        with pytest.raises(pytest.fail.Exception):
            check_bridge_command(argv)
    assert check_bridge_command(["bridge", "dlq", "list", "--limit", "5"]).params["limit"] == 5
