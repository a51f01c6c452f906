"""The CLI's one error handler and its option spellings, without sockets: an expected
failure is ``Error: …`` and exit 1, a bug keeps its traceback; ``submit``, ``cancel``
and ``dlq replay`` refuse bad arguments before touching Redis; every long-running command
spells the log options the same way. (The same misuses, run as an operator would in a
subprocess, are in tests/integration/cli/test_cli_misuse.py.)"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator

import click
import fakeredis
import kombu.exceptions
import pytest
import redis
from click.testing import CliRunner, Result

from bridge.cli import BridgeCLI, expected_failure, main
from bridge.commands import MODES
from bridge.dlq import ENTRY_ID
from bridge.errors import ConfigError, NotFoundError
from bridge.producer import READER_IDLE_S, JsonDoorClient
from bridge.settings import BridgeSettings, Mode

LONG_RUNNING = ("worker", "beat", "webhooks", "emulator")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("BRIDGE_", "RUNPOD_")):
            monkeypatch.delenv(name)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


# -- the one handler ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (ConfigError("unknown route 'x'"), "unknown route 'x'"),
        (NotFoundError("no such job", status_code=404, endpoint_id="e"), "HTTP 404: no such job"),
        (
            redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
            "cannot reach Redis: Error 111 connecting to 127.0.0.1:1. Connection refused. "
            "(BRIDGE_REDIS_URL)",
        ),
        (redis.TimeoutError("Timeout reading from socket"), "cannot reach Redis: Timeout"),
        (redis.AuthenticationError("invalid password"), "Redis refused our credentials"),
        (redis.ResponseError("WRONGTYPE Operation"), "Redis refused a command: WRONGTYPE"),
        (kombu.exceptions.OperationalError("refused"), "cannot reach the broker: refused"),
        (OSError(98, "Address already in use"), "[Errno 98] Address already in use"),
    ],
)
def test_expected_failures_are_told_in_one_line(exc: Exception, says: str) -> None:
    message = expected_failure(exc)
    assert message is not None
    assert message.startswith(says)
    assert "\n" not in message


@pytest.mark.parametrize("exc", [KeyError("x"), TypeError("bug"), AssertionError(), ValueError()])
def test_a_bug_is_not_an_expected_failure(exc: Exception) -> None:
    assert expected_failure(exc) is None


def test_the_group_turns_expected_failures_into_error_and_exit_1() -> None:
    group = BridgeCLI()

    @group.command()
    @click.argument("what")
    def fail(what: str) -> None:
        if what == "redis":
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        if what == "nested":
            raise ConfigError("invalid bridge settings in the environment:\n  redis_url: …")
        raise KeyError(what)

    down = CliRunner().invoke(group, ["fail", "redis"])
    assert (down.exit_code, down.output) == (
        1,
        "Error: cannot reach Redis: Error 111 connecting to 127.0.0.1:1. Connection refused. "
        "(BRIDGE_REDIS_URL)\n",
    )
    nested = CliRunner().invoke(group, ["fail", "nested"])
    assert nested.exit_code == 1
    assert nested.output.startswith("Error: invalid bridge settings in the environment:\n")
    bug = CliRunner().invoke(group, ["fail", "bug"])
    assert isinstance(bug.exception, KeyError)  # a bug keeps its traceback


def test_sub_groups_are_covered_too() -> None:
    assert isinstance(main, BridgeCLI)
    dlq = main.commands["dlq"]
    assert isinstance(dlq, click.Group)
    assert set(dlq.commands) == {"list", "replay", "purge"}  # run inside main.invoke


# -- submit, cancel, dlq replay: arguments checked before Redis is asked --------------------
# (the unit tier refuses sockets: a command that tried to connect would fail the test)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--id", "has/slash"], "Invalid value for '--id': 'has/slash' is not a request id"),
        (["--id", "x" * 201], "is not a request id"),
        (["--timeout", "0"], "Invalid value for '--timeout': 0.0 is not in the range x>0"),
        (["--timeout", "-5"], "Invalid value for '--timeout'"),
        (["--mode", "fast"], "Invalid value for '--mode': 'fast' is not one of 'poll'"),
    ],
)
def test_submit_checks_its_options_locally(args: list[str], says: str) -> None:
    result = run("submit", "echo", "{}", *args)
    assert result.exit_code == 2  # a usage error, as click says it
    assert says in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("job_input", "says"),
    [
        ("{not json", "Error: JOB_INPUT is not valid JSON: Expecting property name"),
        ("[1, 2]", "Error: JOB_INPUT must be a JSON object"),
        ('{"x": NaN}', "Error: JOB_INPUT cannot be sent: NaN or Infinity"),
        ('{"x": ' * 70 + "1" + "}" * 70, "Error: JOB_INPUT cannot be sent: nesting deeper than"),
    ],
)
def test_submit_checks_its_input_locally(job_input: str, says: str) -> None:
    result = run("submit", "echo", job_input)
    assert result.exit_code == 1
    assert result.output.startswith(says)


def test_submit_names_an_unknown_route_before_sending() -> None:
    result = run("submit", "nope", "{}")
    assert (result.exit_code, result.output) == (
        1,
        "Error: unknown route 'nope' (configured: echo, fail, stream)\n",
    )


def test_submit_modes_are_the_settings_modes() -> None:
    assert typing.get_args(Mode) == MODES


def test_cancel_checks_the_request_id_locally() -> None:
    result = run("cancel", "a b")
    assert result.exit_code == 2
    assert "Invalid value for 'REQUEST_ID': 'a b' is not a request id" in result.output


@pytest.mark.parametrize("entry", ["garbage", "1-x", "1-2-3", "1 ", ""])
def test_dlq_replay_refuses_what_is_not_an_entry_id(entry: str) -> None:
    result = run("dlq", "replay", entry)
    assert result.exit_code == 1
    assert f"Error: no dead letter {entry!r}: not an entry id" in result.output


@pytest.mark.parametrize("entry", ["1700000000000-0", "1700000000000", "0-1"])
def test_entry_ids_redis_accepts(entry: str) -> None:
    assert ENTRY_ID.fullmatch(entry)


def test_a_redis_url_redis_py_cannot_use_is_an_error_before_any_command_runs() -> None:
    for args in (["health"], ["submit", "echo", "{}"], ["dlq", "list"], ["worker"], ["beat"]):
        result = run(*args, env={"BRIDGE_REDIS_URL": "http://127.0.0.1:6379/0"})
        assert result.exit_code == 1, args
        assert result.output.startswith(
            "Error: invalid bridge settings in the environment:\n  redis_url: "
        ), args
        assert "[BRIDGE_REDIS_URL]" in result.output


# -- nobody reading the request stream -------------------------------------------------------


@pytest.fixture
def door() -> Iterator[tuple[JsonDoorClient, fakeredis.FakeRedis]]:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    yield JsonDoorClient(BridgeSettings.load(), client), client
    client.close()


def test_a_stream_nobody_ever_read_is_told(
    door: tuple[JsonDoorClient, fakeredis.FakeRedis],
) -> None:
    producer, _ = door
    assert producer.nobody_reading() == (
        "no worker has ever read bridge:requests (it has no consumer group 'bridge')"
    )


def test_a_group_without_consumers_is_told(
    door: tuple[JsonDoorClient, fakeredis.FakeRedis],
) -> None:
    producer, client = door
    client.xgroup_create("bridge:requests", "bridge", id="0", mkstream=True)
    assert producer.nobody_reading() == (
        "no worker is reading bridge:requests (consumer group 'bridge' has no consumers)"
    )
    client.xreadgroup("bridge", "host:1", {"bridge:requests": ">"}, count=1)
    assert producer.nobody_reading() is None  # a consumer that read just now


def test_consumers_silent_for_long_are_taken_for_gone(
    door: tuple[JsonDoorClient, fakeredis.FakeRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    producer, client = door
    client.xgroup_create("bridge:requests", "bridge", id="0", mkstream=True)
    client.xreadgroup("bridge", "host:1", {"bridge:requests": ">"}, count=1)
    silent_ms = int(READER_IDLE_S * 1000) + 5_000
    real = client.xinfo_consumers

    def aged(*args: object) -> list[dict[str, object]]:
        return [{**c, "idle": silent_ms} for c in real(*args)]

    monkeypatch.setattr(client, "xinfo_consumers", aged)  # fakeredis has no clock to move
    assert producer.nobody_reading() == "no worker has read bridge:requests for 65s"


# -- one spelling of the log options ---------------------------------------------------------


def options_of(name: str) -> dict[str, click.Option]:
    command = main.commands[name]
    return {o.name: o for o in command.params if isinstance(o, click.Option) and o.name is not None}


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_long_running_command_spells_the_log_options_alike(name: str) -> None:
    options = options_of(name)
    level, fmt = options["log_level"], options["log_format"]
    assert set(level.opts) == {"--log-level", "-l", "--loglevel"}
    assert (level.envvar, fmt.envvar) == ("BRIDGE_LOG_LEVEL", "BRIDGE_LOG_FORMAT")
    shown = run(name, "--help").output
    assert "-l, --log-level LEVEL" in shown
    assert "--loglevel" not in shown  # Celery's spelling: accepted, not advertised
    assert "env var: BRIDGE_LOG_FORMAT" in shown


@pytest.mark.parametrize("spelling", ["--log-level", "-l", "--loglevel"])
def test_each_spelling_and_any_case_reaches_the_command(spelling: str) -> None:
    ctx = main.commands["beat"].make_context("beat", [spelling, "debug"])
    assert ctx.params["log_level"] == "DEBUG"


def test_log_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def chosen(name: str) -> tuple[str, str]:
        ctx = main.commands[name].make_context(name, [])
        return ctx.params["log_format"], ctx.params["log_level"]

    assert {chosen(name) for name in LONG_RUNNING} == {("text", "INFO")}
    monkeypatch.setenv("BRIDGE_LOG_FORMAT", "json")
    monkeypatch.setenv("BRIDGE_LOG_LEVEL", "warning")
    assert {chosen(name) for name in LONG_RUNNING} == {("json", "WARNING")}


def test_a_wrong_level_is_a_usage_error_without_the_hidden_alias() -> None:
    result = run("webhooks", "--log-level", "LOUD")
    assert result.exit_code == 2
    assert "Invalid value for '--log-level' / '-l': 'LOUD'" in result.output


def test_worker_help_shows_where_celery_options_go() -> None:
    shown = run("worker", "--help").output
    assert "[-- CELERY_ARGS]..." in shown
    assert "bridge worker -Q bridge-sdxl -- --hostname=gpu1@%h" in shown
    refused = run("worker", "-n", "w1@%h")
    assert refused.exit_code == 2
    assert "Celery's own options go after `--`: bridge worker -- -n" in refused.output
