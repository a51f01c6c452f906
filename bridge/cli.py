"""The ``bridge`` command line. Sub-commands import what they need when they run, so
``bridge --help`` and ``bridge emulator`` start fast."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from bridge import __version__, logs
from bridge.errors import ConfigError
from bridge.logs import LOG_FORMATS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bridge")
def main() -> None:
    """Connect queues (Redis, RabbitMQ, Celery) to serverless GPU endpoints."""


@main.command()
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [default: 8000].")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BRIDGE_EMULATOR_CONFIG",
    default=None,
    help="TOML file with endpoints, templates and limits (see config/emulator.toml).",
)
@click.option("--log-level", default="INFO", show_default=True, help="Python log level.")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="Log lines as plain text or one JSON object per line.",
)
def emulator(
    host: str | None,
    port: int | None,
    config_path: Path | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the local RunPod-compatible endpoint server."""
    from bridge.emulator.app import serve
    from bridge.emulator.settings import DEV_API_KEY, EmulatorSettings

    logs.configure(log_format, log_level)
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        settings = EmulatorSettings.load(config_path, **overrides)
        settings.check_bind()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for key in settings.api_keys:
        logs.register_secret(key.get_secret_value())

    def ready(bound: int) -> None:
        endpoints = ", ".join(e.id for e in settings.endpoints)
        click.echo(f"emulator listening on http://{settings.host}:{bound}/v2 ({endpoints})")
        if not settings.api_keys:
            click.echo(f"development key: {DEV_API_KEY}")
        sys.stdout.flush()

    try:
        asyncio.run(serve(settings, ready=ready))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: {exc}"
        ) from None


@main.command()
@click.option("--port", type=int, default=8000, show_default=True, help="Preferred port.")
def demo(port: int) -> None:
    """Start the emulator, Redis (found or private), a worker and beat; tour both doors."""
    from bridge.demo import run_demo
    from bridge.errors import BridgeError

    try:
        run_demo(port=port)
    except BridgeError as exc:  # the demo's own checks, or a part that could not start
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: everything the demo started was stopped", err=True)
        sys.exit(130)


def _register() -> None:
    from bridge.commands import COMMANDS
    from bridge.probe import ping

    for command in [*COMMANDS, ping]:
        main.add_command(command)


_register()
