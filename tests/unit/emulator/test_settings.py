from pathlib import Path

import pytest

from bridge.emulator.settings import DEV_API_KEY, EmulatorSettings
from bridge.errors import ConfigError


def test_defaults_have_builtin_endpoints_and_dev_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDGE_EMULATOR_API_KEYS", raising=False)
    settings = EmulatorSettings.load()
    assert [e.id for e in settings.endpoints] == ["echo", "stream", "fail", "external"]
    assert settings.accepted_keys() == [DEV_API_KEY]
    settings.check_bind()  # loopback: fine


def test_env_keys_are_comma_separated_and_replace_dev_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_EMULATOR_API_KEYS", "k1, k2")
    settings = EmulatorSettings.load(host="0.0.0.0")
    assert settings.accepted_keys() == ["k1", "k2"]
    settings.check_bind()
    assert "k1" not in repr(settings)


def test_non_loopback_without_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDGE_EMULATOR_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match=r"refusing to listen on '0\.0\.0\.0'"):
        EmulatorSettings.load(host="0.0.0.0").check_bind()


def test_toml_file_then_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "emu.toml"
    path.write_text(
        """
[server]
port = 9001
run_retention_s = 5

[[templates]]
id = "t1"
imageName = "echo"

[[endpoints]]
id = "mine"
templateId = "t1"
workersMax = 7
"""
    )
    monkeypatch.setenv("BRIDGE_EMULATOR_PORT", "9002")
    settings = EmulatorSettings.load(path)
    assert settings.port == 9002
    assert settings.run_retention_s == 5
    assert [(e.id, e.workersMax) for e in settings.endpoints] == [("mine", 7)]


def test_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[endpoints]]\nid = "x"\ntemplateId = "t"\nworkersMax = -1\n')
    with pytest.raises(ConfigError) as info:
        EmulatorSettings.load(path)
    assert str(path) in str(info.value)
    assert "endpoints.0.workersMax" in str(info.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        EmulatorSettings.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        EmulatorSettings.load(bad)


def test_shipped_example_config_loads(repo_root: Path) -> None:
    settings = EmulatorSettings.load(repo_root / "config" / "emulator.toml")
    assert {"echo", "stream", "fail", "external"} <= {e.id for e in settings.endpoints}


# -- issue 14 items 3 and 5: keys and handlers are checked at load ----------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([""], "key 1 is empty"),
        (["good-key", "  "], "key 2 is empty"),
        ("good-key,,other", "key 2 is empty"),
        ([DEV_API_KEY], "rp-emulator-dev-key is public"),
    ],
)
def test_empty_or_public_keys_are_refused(keys: object, message: str) -> None:
    """Before: ``api_keys = [""]`` was accepted and passed the non-loopback bind check."""
    with pytest.raises(ConfigError, match=message):
        EmulatorSettings.load(host="0.0.0.0", api_keys=keys)


def test_an_empty_key_variable_means_no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_EMULATOR_API_KEYS", "")
    settings = EmulatorSettings.load(host="0.0.0.0")
    assert settings.api_keys == []
    with pytest.raises(ConfigError, match="refusing to listen"):
        settings.check_bind()


def test_handlers_extend_the_builtins_by_name() -> None:
    settings = EmulatorSettings.load(
        handlers={"sdxl": "models.images:sdxl"},
        templates=[
            {"id": "a", "imageName": "sdxl"},
            {"id": "b", "imageName": "echo"},
            {"id": "c", "imageName": "pkg.mod:func"},  # configured here: allowed as named
        ],
        endpoints=[{"id": "e", "templateId": "a"}],
    )
    assert settings.handler_paths() == {
        "echo": "bridge.emulator.handlers:echo",
        "stream": "bridge.emulator.handlers:stream",
        "fail": "bridge.emulator.handlers:fail",
        "sdxl": "models.images:sdxl",
        "pkg.mod:func": "pkg.mod:func",
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"handlers": {"echo": "x.y:z"}}, "'echo' cannot name a handler"),
        ({"handlers": {"external": "x.y:z"}}, "'external' cannot name a handler"),
        ({"handlers": {"mine": "not a path"}}, "not of the form 'package.module:function'"),
        ({"handlers": {"mine": "x.y"}}, "not of the form"),
        (
            {"templates": [{"id": "t", "imageName": "runpod/worker:latest"}]},
            "template 't': imageName 'runpod/worker:latest' is not a handler",
        ),
        ({"allowed_hosts": "emulator,,"}, "a host name must not be empty"),
    ],
)
def test_handlers_and_hosts_are_validated(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EmulatorSettings.load(**fields)


def test_allowed_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_EMULATOR_ALLOWED_HOSTS", "Emulator, bridge.internal.")
    assert EmulatorSettings.load().allowed_hosts == ["emulator", "bridge.internal"]


# -- issue 16: the fast (default) and runpod profiles ------------------------------------------


def test_the_fast_profile_is_the_default_and_keeps_test_suites_fast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BRIDGE_EMULATOR_PROFILE", raising=False)
    settings = EmulatorSettings.load()
    assert settings.profile == "fast"
    assert (settings.cold_start_ms, settings.account_max_workers) == (1000, None)
    assert (settings.min_ttl_ms, settings.min_execution_timeout_ms) == (1, 1)
    assert not settings.concurrency_limits_enabled
    assert [(e.id, e.workersMax) for e in settings.endpoints][:3] == [
        ("echo", 100),
        ("stream", 100),
        ("fail", 100),
    ]


def test_what_both_profiles_share() -> None:
    for profile in ("fast", "runpod"):
        settings = EmulatorSettings.load(profile=profile)
        assert settings.default_ttl_ms == 24 * 3600 * 1000
        assert settings.stream_default_wait_ms == 5000
        assert (settings.webhook_attempts, settings.webhook_retry_interval_s) == (3, 10.0)
        assert settings.requeue_on_worker_loss
        assert settings.concurrency_limits == {
            "run": 200, "runsync": 400, "status": 400, "status-sync": 400, "stream": 400,
            "cancel": 20,
        }  # fmt: skip


def test_the_runpod_profile_has_runpods_limits_and_timings() -> None:
    settings = EmulatorSettings.load(profile="runpod")
    assert settings.account_max_workers == 5
    assert (settings.cold_start_ms, settings.flashboot_cold_start_ms) == (10_000, 2_000)
    assert (settings.min_ttl_ms, settings.min_execution_timeout_ms) == (10_000, 5_000)
    assert settings.concurrency_limits_enabled
    assert (settings.run_max_bytes, settings.runsync_max_bytes) == (10_000_000, 20_000_000)
    assert (settings.result_max_bytes, settings.stream_chunk_max_bytes) == (20_000_000, 1_000_000)
    assert settings.admin_rate_limits == {"minute": 60, "hour": 3000, "day": 50000}
    echo = settings.endpoints[0]
    assert (echo.workersMax, echo.scalerType, echo.scalerValue, echo.idleTimeout) == (
        3,
        "QUEUE_DELAY",
        4,
        5,
    )


def test_explicit_settings_win_over_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert EmulatorSettings.load(profile="runpod", cold_start_ms=0).cold_start_ms == 0
    path = tmp_path / "emu.toml"
    path.write_text("[server]\ncold_start_ms = 250\naccount_max_workers = 9\n")
    monkeypatch.setenv("BRIDGE_EMULATOR_PROFILE", "runpod")
    monkeypatch.setenv("BRIDGE_EMULATOR_ACCOUNT_MAX_WORKERS", "7")
    settings = EmulatorSettings.load(path)
    assert settings.profile == "runpod"  # from the environment
    assert settings.cold_start_ms == 250  # the file's, not the profile's
    assert settings.account_max_workers == 7  # the environment wins over the file
    assert settings.min_ttl_ms == 10_000  # the rest from the profile


def test_the_profile_can_be_set_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "emu.toml"
    path.write_text('[server]\nprofile = "runpod"\n')
    assert EmulatorSettings.load(path).account_max_workers == 5


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ConfigError, match="profile"):
        EmulatorSettings.load(profile="slow")


def test_tls_needs_both_files_and_they_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not checked here")
    with pytest.raises(ConfigError, match="go together"):
        EmulatorSettings.load(tls_cert_file=cert)
    with pytest.raises(ConfigError, match="no such file"):
        EmulatorSettings.load(tls_cert_file=cert, tls_key_file=tmp_path / "missing.pem")
    both = EmulatorSettings.load(tls_cert_file=cert, tls_key_file=cert)
    assert both.scheme == "https"
    assert EmulatorSettings.load().scheme == "http"
