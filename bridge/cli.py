"""The ``bridge`` command line. Sub-commands import what they need when they run, so
``bridge --help`` and ``bridge emulator`` start fast.

Every expected failure (bad configuration, Redis or a port out of reach, an endpoint's
error) ends as ``Error: …`` on stderr and exit status 1, in one place: :class:`BridgeCLI`.
A traceback means a bug.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from bridge import __version__, logs
from bridge.commands import log_format_option, log_level_option, why
from bridge.errors import BridgeError


def expected_failure(exc: BaseException) -> str | None:
    """What to tell a person about ``exc``, or None when it is a bug (a traceback then).

    Library modules are looked up in ``sys.modules``, not imported: an exception of a
    library that was never imported cannot be raised.
    """
    if isinstance(exc, BridgeError):
        return str(exc)
    redis_errors: Any = sys.modules.get("redis.exceptions")
    if redis_errors is not None and isinstance(exc, redis_errors.RedisError):
        if isinstance(exc, redis_errors.AuthenticationError):
            return f"Redis refused our credentials: {exc} (BRIDGE_REDIS_URL)"
        if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
            return f"cannot reach Redis: {exc} (BRIDGE_REDIS_URL)"
        return f"Redis refused a command: {exc}"
    kombu_errors: Any = sys.modules.get("kombu.exceptions")
    if kombu_errors is not None and isinstance(exc, kombu_errors.OperationalError):
        return f"cannot reach the broker: {exc} (BRIDGE_BROKER_URL)"
    if isinstance(exc, OSError):  # a port in use, a file we may not read, ...
        return str(exc)
    return None


class BridgeCLI(click.Group):
    """The ``bridge`` group: turns every expected failure of a sub-command into
    ``Error: …`` and exit status 1 (click prints a ClickException so)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = expected_failure(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


@click.group(cls=BridgeCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bridge")
def main() -> None:
    """Connect queues (Redis, RabbitMQ, Celery) to serverless GPU endpoints."""


@main.command()
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port [default: 8000].")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BRIDGE_EMULATOR_CONFIG",
    default=None,
    help="TOML file with endpoints, templates and limits (see config/emulator.toml).",
)
@click.option(
    "--profile",
    type=click.Choice(["fast", "runpod"]),
    default=None,
    help="fast: tuned for tests (the default); runpod: RunPod's limits, cold starts and "
    "caps, to try code before deploying (see docs/emulator.md) "
    "[env: BRIDGE_EMULATOR_PROFILE].",
)
@log_level_option
@log_format_option
def emulator(
    host: str | None,
    port: int | None,
    config_path: Path | None,
    profile: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the local RunPod-compatible endpoint server."""
    from bridge.emulator.app import serve
    from bridge.emulator.settings import DEV_API_KEY, EmulatorSettings

    logs.configure(log_format, log_level)
    pairs = (("host", host), ("port", port), ("profile", profile))
    overrides = {k: v for k, v in pairs if v is not None}
    settings = EmulatorSettings.load(config_path, **overrides)
    settings.check_bind()
    for key in settings.api_keys:
        logs.register_secret(key.get_secret_value())

    def ready(bound: int) -> None:
        endpoints = ", ".join(e.id for e in settings.endpoints)
        url = f"{settings.scheme}://{settings.host}:{bound}/v2"
        click.echo(f"emulator listening on {url} ({endpoints}; profile {settings.profile})")
        if not settings.api_keys:
            click.echo(f"development key: {DEV_API_KEY}")
        sys.stdout.flush()

    try:
        asyncio.run(serve(settings, ready=ready))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: {why(exc)}"
        ) from None


@main.command()
@click.option("--port", type=int, default=8000, show_default=True, help="Preferred port.")
def demo(port: int) -> None:
    """Start the emulator, Redis (found or private), a worker and beat; tour both doors."""
    from bridge.demo import run_demo

    try:
        run_demo(port=port)
    except KeyboardInterrupt:
        click.echo("interrupted: everything the demo started was stopped", err=True)
        sys.exit(130)


def _register() -> None:
    from bridge.commands import COMMANDS
    from bridge.fleet_commands import COMMANDS as FLEET_COMMANDS
    from bridge.probe import ping

    for command in [*COMMANDS, *FLEET_COMMANDS, ping]:
        main.add_command(command)


_register()
