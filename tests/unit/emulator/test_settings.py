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
