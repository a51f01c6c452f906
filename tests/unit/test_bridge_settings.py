"""The bridge's settings: the routes file, the environment, API keys, and clear errors.

(Named ``test_bridge_settings`` because ``tests/unit/emulator/test_settings.py`` exists and
the test directories are not packages.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.errors import ConfigError
from bridge.settings import DEV_API_KEY, RUNPOD_BUDGETS, BridgeSettings, RouteConfig

SECRET = "rp_SECRET_4f9a1c77e0b2"

TWO_ROUTES = """
requests_stream = "from-file:requests"
key_prefix = "filed"

[routes.sdxl]
endpoint_id = "abc123"
api_key_env = "SDXL_KEY"
mode = "sync"
queue = "gpu"
max_in_flight = 7
policy = { executionTimeout = 60000 }
purge_crontab = "0 4 * * *"

[routes.llm]
endpoint_id = "llm-1"
base_url = "http://127.0.0.1:9000/v2"
mode = "stream"
health_interval_s = 0
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: no BRIDGE_* or RUNPOD_* from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith(("BRIDGE_", "RUNPOD_")) or name in ("SDXL_KEY", "LLM_KEY"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "bridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None = None, **overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        BridgeSettings.load(path, **overrides)
    return str(info.value)


# -- defaults ---------------------------------------------------------------------------


def test_no_file_gives_the_emulator_routes_with_the_dev_key() -> None:
    settings = BridgeSettings.load()
    assert sorted(settings.routes) == ["echo", "fail", "stream"]
    echo = settings.route("echo")
    assert (echo.endpoint_id, echo.base_url, echo.mode) == (
        "echo",
        "http://127.0.0.1:8000/v2",
        "poll",
    )
    assert settings.route("stream").mode == "stream"
    assert echo.api_key().get_secret_value() == DEV_API_KEY
    assert echo.budgets == RUNPOD_BUDGETS
    assert settings.config is None


def test_default_routes_follow_emulator_url_and_runpod_api_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BRIDGE_EMULATOR_URL", "http://10.0.0.5:9000/")
    monkeypatch.setenv("RUNPOD_API_KEY", SECRET)
    echo = BridgeSettings.load().route("echo")
    assert echo.base_url == "http://10.0.0.5:9000/v2"
    assert echo.api_key().get_secret_value() == SECRET


def test_broker_and_backend_default_to_redis_url() -> None:
    settings = BridgeSettings.load(redis_url="redis://r:6379/3")
    assert (settings.broker, settings.backend) == ("redis://r:6379/3", "redis://r:6379/3")
    amqp = BridgeSettings.load(broker_url="amqp://guest:guest@h//", result_backend="redis://b/1")
    assert (amqp.broker, amqp.backend) == ("amqp://guest:guest@h//", "redis://b/1")


# -- the routes file --------------------------------------------------------------------


def test_routes_file_is_loaded(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_ROUTES)
    settings = BridgeSettings.load(path)
    assert settings.config == path
    assert (settings.requests_stream, settings.key_prefix) == ("from-file:requests", "filed")
    assert sorted(settings.routes) == ["llm", "sdxl"]
    sdxl, llm = settings.route("sdxl"), settings.route("llm")
    assert (sdxl.endpoint_id, sdxl.mode, sdxl.queue, sdxl.max_in_flight) == (
        "abc123",
        "sync",
        "gpu",
        7,
    )
    assert sdxl.policy == {"executionTimeout": 60000}
    assert sdxl.purge_crontab == "0 4 * * *"
    assert sdxl.base_url == "https://api.runpod.ai/v2"  # the default
    assert (llm.base_url, llm.mode, llm.health_interval_s) == (
        "http://127.0.0.1:9000/v2",
        "stream",
        0,
    )


def test_bridge_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", str(write(tmp_path, TWO_ROUTES)))
    assert sorted(BridgeSettings.load().routes) == ["llm", "sdxl"]


def test_unknown_route_names_what_is_configured(tmp_path: Path) -> None:
    settings = BridgeSettings.load(write(tmp_path, TWO_ROUTES))
    with pytest.raises(ConfigError, match=r"unknown route 'nope' \(configured: llm, sdxl\)"):
        settings.route("nope")


@pytest.mark.parametrize(
    ("table", "where", "says"),
    [
        ('max_in_flight = 0\nendpoint_id = "e"', "routes.r.max_in_flight", "greater than or equal"),
        ('mode = "fast"\nendpoint_id = "e"', "routes.r.mode", "'poll', 'stream', 'sync' or"),
        ('endpoint_id = "has space"', "routes.r.endpoint_id", "pattern"),
        ('endpoint_id = "e"\nbase_url = "ftp://x"', "routes.r.base_url", "pattern"),
        ("queue = 'q'", "routes.r.endpoint_id", "Field required"),
        ('endpoint_id = "e"\ncolour = "red"', "routes.r.colour", "unknown setting"),
        (
            'endpoint_id = "e"\nbudgets = { fly = 1 }',
            "routes.r",
            "unknown budget operation(s): fly",
        ),
        (
            'endpoint_id = "e"\npurge_crontab = "0 4 *"',
            "routes.r",
            "purge_crontab must have 5 fields",
        ),
        ('endpoint_id = "e"\ndelivery = "twice"', "routes.r.delivery", "at_least_once"),
        ('endpoint_id = "e"\nreply_ttl_s = 0', "routes.r.reply_ttl_s", "greater than or equal"),
    ],
)
def test_route_errors_name_file_route_and_field(
    tmp_path: Path, table: str, where: str, says: str
) -> None:
    path = write(tmp_path, f"[routes.r]\n{table}\n")
    message = config_error(path)
    assert f"invalid bridge settings in {path}:" in message
    assert f"{where}" in message
    assert says in message


def test_second_route_error_is_named_too(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_ROUTES + '\n[routes.bad]\nendpoint_id = "x"\nmax_in_flight = -1\n')
    assert "routes.bad.max_in_flight" in config_error(path)


def test_unknown_top_level_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'redis_uri = "redis://x"\nrouts = 1\n' + TWO_ROUTES)
    message = config_error(path)
    assert message == (
        f"invalid bridge settings in {path}:\n"
        "  redis_uri: unknown setting\n"
        "  routs: unknown setting"
    )


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        "colour = 1\nsize = 2\nwebhook_port = 70000\n"
        '[routes.a]\nendpoint_id = "e"\nfoo = 1\nbar = 2\n'
        '[routes.b]\nendpoint_id = "f"\nbaz = 3\nmax_in_flight = 0\n'
    )
    lines = config_error(write(tmp_path, text)).splitlines()[1:]
    assert lines == [
        "  colour: unknown setting",
        "  size: unknown setting",
        "  webhook_port: Input should be less than or equal to 65535",
        "  routes.a.foo: unknown setting",
        "  routes.a.bar: unknown setting",
        "  routes.b.max_in_flight: Input should be greater than or equal to 1",
        "  routes.b.baz: unknown setting",
    ]


def test_default_route_is_gone_not_ignored(tmp_path: Path) -> None:
    """It was documented as "not used yet", then removed: a file that still sets it is
    told so instead of believing it works."""
    assert "default_route" not in BridgeSettings.model_fields
    message = config_error(write(tmp_path, 'default_route = "sdxl"\n' + TWO_ROUTES))
    assert "  default_route: unknown setting" in message


def test_invalid_top_level_value_names_file_and_field(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "webhook_port = 70000\n" + TWO_ROUTES))
    assert "in " in message
    assert "webhook_port: Input should be less than or equal to 65535" in message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[routes]\n", "defines no routes"),
        ("routes = 3\n", "routes: must be a table"),
        ("[routes.r\n", "is not valid TOML"),
    ],
)
def test_broken_files_are_named(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message
    assert says in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    assert config_error(missing) == f"bridge config file not found: {missing}"


def test_a_budget_left_out_keeps_runpods_limit_as_documented(
    tmp_path: Path, repo_root: Path
) -> None:
    path = write(tmp_path, '[routes.r]\nendpoint_id = "e"\nbudgets = { run = 10 }\n')
    assert BridgeSettings.load(path).route("r").budgets == {**RUNPOD_BUDGETS, "run": 10}
    described = RouteConfig.model_fields["budgets"].description or ""
    assert "an operation left out keeps RunPod's limit" in described
    assert "no budget" not in described
    example = (repo_root / "config" / "bridge.toml").read_text(encoding="utf-8")
    assert "Operations left out keep RunPod's default." in example


# -- the environment and explicit overrides ---------------------------------------------


def test_environment_overrides_the_file_and_overrides_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, TWO_ROUTES)
    monkeypatch.setenv("BRIDGE_REQUESTS_STREAM", "env:requests")
    monkeypatch.setenv("BRIDGE_REDIS_URL", "redis://env:6379/2")
    monkeypatch.setenv("BRIDGE_SUBMIT_TIMEOUT_S", "5")
    settings = BridgeSettings.load(path)
    assert (settings.requests_stream, settings.redis_url) == ("env:requests", "redis://env:6379/2")
    assert settings.submit_timeout_s == 5.0
    assert settings.key_prefix == "filed"  # not in the environment: the file's value
    assert BridgeSettings.load(path, requests_stream="arg").requests_stream == "arg"


def test_routes_from_the_environment_replace_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, TWO_ROUTES)
    monkeypatch.setenv("BRIDGE_ROUTES", '{"env": {"endpoint_id": "from-env", "max_in_flight": 3}}')
    settings = BridgeSettings.load(path)
    assert list(settings.routes) == ["env"]
    assert settings.route("env").max_in_flight == 3
    monkeypatch.delenv("BRIDGE_ROUTES")
    given = {"arg": RouteConfig(endpoint_id="from-arg")}
    assert list(BridgeSettings.load(path, routes=given).routes) == ["arg"]


def test_a_per_route_variable_changes_one_field_and_keeps_every_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, TWO_ROUTES)
    monkeypatch.setenv("BRIDGE_ROUTES__SDXL__ENDPOINT_ID", "from-env")
    monkeypatch.setenv("BRIDGE_ROUTES__SDXL__MAX_IN_FLIGHT", "50")  # was "endpoint_id required"
    monkeypatch.setenv("BRIDGE_ROUTES__LLM__POLICY", '{"ttl": 60000}')  # tables as JSON
    monkeypatch.setenv("BRIDGE_ROUTES__LLM__BUDGETS", '{"run": 10}')
    settings = BridgeSettings.load(path)
    assert sorted(settings.routes) == ["llm", "sdxl"]
    sdxl, llm = settings.route("sdxl"), settings.route("llm")
    assert (sdxl.endpoint_id, sdxl.max_in_flight) == ("from-env", 50)
    assert (sdxl.mode, sdxl.queue, sdxl.api_key_env) == ("sync", "gpu", "SDXL_KEY")  # the file's
    assert (llm.endpoint_id, llm.mode, llm.policy) == ("llm-1", "stream", {"ttl": 60000})
    assert llm.budgets == {**RUNPOD_BUDGETS, "run": 10}


def test_a_per_route_variable_matches_the_files_route_whatever_its_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[routes.ImageGen]\nendpoint_id = "img"\n')
    monkeypatch.setenv("BRIDGE_ROUTES__IMAGEGEN__MAX_IN_FLIGHT", "3")
    assert {n: r.max_in_flight for n, r in BridgeSettings.load(path).routes.items()} == {
        "ImageGen": 3
    }


def test_per_route_variables_add_a_route_that_names_its_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, TWO_ROUTES)
    monkeypatch.setenv("BRIDGE_ROUTES__EXTRA__ENDPOINT_ID", "extra-1")
    settings = BridgeSettings.load(path)
    assert sorted(settings.routes) == ["extra", "llm", "sdxl"]
    assert settings.route("extra").endpoint_id == "extra-1"


def test_a_variable_for_a_route_the_file_lacks_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, TWO_ROUTES)
    monkeypatch.setenv("BRIDGE_ROUTES__SDLX__MAX_IN_FLIGHT", "50")  # a typo of sdxl
    assert config_error(path) == (
        "invalid bridge settings in the environment:\n"
        f"  routes.sdlx.endpoint_id: Field required [BRIDGE_ROUTES__SDLX__*: {path} has no "
        "route 'sdlx']"
    )


def test_per_route_variables_change_the_built_in_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_ROUTES__ECHO__MODE", "stream")
    settings = BridgeSettings.load()
    assert sorted(settings.routes) == ["echo", "fail", "stream"]
    echo = settings.route("echo")
    assert (echo.endpoint_id, echo.mode) == ("echo", "stream")
    assert echo.api_key().get_secret_value() == DEV_API_KEY  # still the built-in route


def test_a_bad_per_route_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, TWO_ROUTES + '\n[routes.bad]\nendpoint_id = "x"\nqueue = ""\n')
    monkeypatch.setenv("BRIDGE_ROUTES__LLM__MAX_IN_FLIGHT", "0")
    monkeypatch.setenv("BRIDGE_ROUTES__LLM__MAX_INFLIGHT", "5")
    first, *lines = config_error(path).splitlines()
    assert first == f"invalid bridge settings in {path} and in the environment:"
    assert sorted(lines) == [
        "  routes.bad.queue: String should have at least 1 character",  # the file's: no name
        "  routes.llm.max_in_flight: Input should be greater than or equal to 1 "
        "[BRIDGE_ROUTES__LLM__MAX_IN_FLIGHT]",
        "  routes.llm.max_inflight: unknown setting [BRIDGE_ROUTES__LLM__MAX_INFLIGHT]",
    ]


def test_whole_routes_json_replaces_and_per_route_variables_apply_on_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_ROUTES", '{"env": {"endpoint_id": "from-env"}}')
    monkeypatch.setenv("BRIDGE_ROUTES__ENV__MODE", "stream")
    settings = BridgeSettings.load(write(tmp_path, TWO_ROUTES))
    assert list(settings.routes) == ["env"]
    assert (settings.route("env").endpoint_id, settings.route("env").mode) == ("from-env", "stream")


def test_a_redis_url_redis_py_cannot_use_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_REDIS_URL", f"http://user:{SECRET}@127.0.0.1:6379/0")
    message = config_error()
    assert message.startswith("invalid bridge settings in the environment:\n  redis_url: ")
    assert "redis://, rediss://, unix://" in message
    assert message.endswith("[BRIDGE_REDIS_URL]")
    assert SECRET not in message
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380/1", "unix:///tmp/redis.sock"):
        assert BridgeSettings.load(redis_url=url).redis_url == url


def test_invalid_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK_PORT", "-1")
    assert "in the environment" in config_error()
    assert "webhook_port" in config_error()
    monkeypatch.delenv("BRIDGE_WEBHOOK_PORT")
    monkeypatch.setenv("BRIDGE_ROUTES", "{not json")
    message = config_error()
    assert "in the environment" in message
    assert "routes" in message
    monkeypatch.setenv("BRIDGE_ROUTES", '{"r": {"endpoint_id": "e", "mode": "fast"}}')
    assert "routes.r.mode" in config_error()


# -- API keys ---------------------------------------------------------------------------


def test_key_from_the_named_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    route = BridgeSettings.load(write(tmp_path, TWO_ROUTES)).route("sdxl")
    monkeypatch.setenv("SDXL_KEY", SECRET)
    assert route.api_key().get_secret_value() == SECRET
    monkeypatch.setenv("SDXL_KEY", "rotated")
    assert route.api_key().get_secret_value() == "rotated"  # read when asked


def test_key_from_a_secret_file_wins_and_is_stripped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = write(tmp_path, f"{SECRET}\n", name="runpod-key")
    monkeypatch.setenv("RUNPOD_API_KEY", "the-env-one")
    route = RouteConfig(endpoint_id="e", api_key_file=secret)
    assert route.api_key().get_secret_value() == SECRET


def test_missing_key_names_variable_and_endpoint(tmp_path: Path) -> None:
    route = BridgeSettings.load(write(tmp_path, TWO_ROUTES)).route("sdxl")
    with pytest.raises(ConfigError, match=r"no API key for endpoint 'abc123': set SDXL_KEY"):
        route.api_key()


def test_unreadable_key_file_is_named(tmp_path: Path) -> None:
    route = RouteConfig(endpoint_id="e", api_key_file=tmp_path / "missing-key")
    with pytest.raises(ConfigError, match=r"cannot read the API key file .*missing-key"):
        route.api_key()


def test_the_key_never_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDXL_KEY", SECRET)
    secret_file = write(tmp_path, SECRET, name="key")
    path = write(
        tmp_path,
        TWO_ROUTES + f'\n[routes.filed]\nendpoint_id = "f"\napi_key_file = "{secret_file}"\n',
    )
    settings = BridgeSettings.load(path)
    keys = [settings.route(n).api_key() for n in ("sdxl", "filed")]
    shown = [repr(settings), str(settings), *map(repr, keys), *map(str, keys)]
    shown += [repr(settings.route(n)) for n in settings.routes]
    shown.append(settings.model_dump_json())
    assert not [s for s in shown if SECRET in s]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (  # a key written in a route
            f'[routes.r]\nendpoint_id = "e"\napi_key = "{SECRET}"\n',
            r"routes\.r\.api_key: unknown setting",
        ),
        (  # ... or at the top
            f'api_key = "{SECRET}"\n[routes.r]\nendpoint_id = "e"\n',
            r"(?m)^  api_key: unknown setting$",
        ),
        (  # ... or anywhere
            f'[routes.r]\nendpoint_id = "e"\nmax_in_flight = "{SECRET}"\n',
            r"routes\.r\.max_in_flight: Input should be a valid integer",
        ),
    ],
)
def test_config_errors_never_echo_a_key(tmp_path: Path, text: str, names: str) -> None:
    message = config_error(write(tmp_path, text))
    assert re.search(names, message), message  # says which setting is wrong ...
    assert SECRET not in message  # ... without its value


def test_environment_errors_never_echo_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_ROUTES", f'{{"r": {{"endpoint_id": "e", "api_key": "{SECRET}"}}}}')
    message = config_error()
    assert "routes.r.api_key" in message
    assert SECRET not in message
    monkeypatch.setenv("BRIDGE_ROUTES", f'{{"r": "{SECRET}"')
    assert SECRET not in config_error()


# -- the shipped example ----------------------------------------------------------------


def test_shipped_example_loads_and_documents_every_route_field(repo_root: Path) -> None:
    path = repo_root / "config" / "bridge.toml"
    settings = BridgeSettings.load(path)
    assert sorted(settings.routes) == ["echo", "llm", "sdxl"]
    assert settings.route("llm").api_key_file == Path("/run/secrets/runpod_api_key")
    assert settings.route("sdxl").budgets == RUNPOD_BUDGETS
    text = path.read_text(encoding="utf-8")
    missing = [f for f in RouteConfig.model_fields if f"{f} =" not in text]
    assert missing == []
    assert "api_key =" not in text  # keys only by variable name or secret file


def test_a_purge_schedule_faster_than_its_budget_is_refused() -> None:
    with pytest.raises(ValidationError, match="shorter than the purge budget"):
        RouteConfig(endpoint_id="e", purge_every_s=1)
    assert RouteConfig(endpoint_id="e", purge_every_s=5).purge_every_s == 5
    assert RouteConfig(endpoint_id="e", purge_every_s=1, budgets={"purge-queue": 20})


def test_adopt_after_must_outlast_two_lease_renewals() -> None:
    settings = BridgeSettings.load()
    assert (settings.adopt_after_s, settings.renew_every_s) == (3.0, 1.0)
    assert settings.hung_after_s == 60.0
    message = config_error(adopt_after_s=1.5)
    assert "adopt_after_s 1.5 must be at least twice the lease renewal interval (1 s" in message
    assert BridgeSettings.load(adopt_after_s=1.5, recovery_interval_s=0.5).adopt_after_s == 1.5
