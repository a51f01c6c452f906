"""``bridge top`` and ``bridge endpoints list|create|update-template|delete``.

``top`` reads Redis only (:mod:`bridge.fleet`, :mod:`bridge.top`). ``endpoints`` runs the
client library's admin functions (:mod:`bridge.runpod.admin`) with the key in
``RUNPOD_API_KEY`` (or ``--api-key-file``), never on the command line, and prints what
came back as ``bridge health`` does: a table, or JSON with ``--json``. Failures become
``Error: …`` and exit 1 in :mod:`bridge.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from bridge.commands import config_option, load_settings
from bridge.errors import ConfigError


@click.command()
@config_option
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@click.option(
    "--interval",
    type=click.FloatRange(0.1),
    default=1.0,
    show_default=True,
    help="Seconds between two frames.",
)
def top(config_path: Path | None, once: bool, interval: float) -> None:
    """A live view of the fleet from Redis: per route what waits, what runs, what ended
    per minute and how fast; per worker its lease; the dead letters. Ctrl-C ends it."""
    from rich.console import Console

    from bridge import top as view
    from bridge.fleet import Fleet

    fleet = Fleet(load_settings(config_path))
    try:
        console = Console()
        if once:
            console.print(view.render(fleet.snapshot()))
        else:
            view.run(fleet, console, interval=interval)
    finally:
        fleet.close()


# -- endpoints ------------------------------------------------------------------------------

SHOWN = ("id", "name", "status", "templateId", "gpuIds", "workersMin", "workersMax",
         "idleTimeout", "scalerType", "scalerValue", "flashboot")  # fmt: skip
"""The columns of the table (``--json`` prints every key the admin API returned)."""


def _credentials(api_key_file: Path | None, api_base_url: str | None) -> dict[str, Any]:
    import os

    if api_key_file is not None:
        try:
            key = api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the API key file {api_key_file}: {exc.strerror}"
            ) from None
        if not key:
            raise ConfigError(f"the API key file {api_key_file} is empty")
    else:
        key = os.environ.get("RUNPOD_API_KEY", "")
        if not key:
            raise ConfigError("no API key: set RUNPOD_API_KEY or give --api-key-file")
    from bridge import logs

    logs.register_secret(key)
    return {"api_key": key, "api_base_url": api_base_url}


def _admin_options(command: Any) -> Any:
    for option in reversed([
        click.option(
            "--api-base-url",
            envvar="RUNPOD_API_BASE_URL",
            show_envvar=True,
            default=None,
            help="Admin API host, e.g. an emulator's http://127.0.0.1:8000 "
            "[default: https://api.runpod.io].",
        ),
        click.option(
            "--api-key-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="File holding the API key [default: RUNPOD_API_KEY].",
        ),
        click.option(
            "--transport",
            type=click.Choice(["rest", "graphql"]),
            envvar="RUNPOD_ADMIN_TRANSPORT",
            show_envvar=True,
            default=None,
            help="Admin API: REST v2 or GraphQL [default: rest].",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    ]):  # fmt: skip
        command = option(command)
    return command


def _show(endpoints: list[dict[str, Any]] | dict[str, Any], as_json: bool) -> None:
    """A table of ``endpoints``, or JSON: a list, or one endpoint's object."""
    if as_json:
        click.echo(json.dumps(endpoints, indent=2, sort_keys=True))
        return
    if isinstance(endpoints, dict):
        endpoints = [endpoints]
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*SHOWN)
    for endpoint in endpoints:
        table.add_row(*(Text("-" if endpoint.get(k) is None else str(endpoint[k])) for k in SHOWN))
    Console().print(table)


@click.group()
def endpoints() -> None:
    """Serverless endpoints of the account (the admin API): list, create, change, delete."""


@endpoints.command("list")
@_admin_options
def endpoints_list(
    api_base_url: str | None, api_key_file: Path | None, transport: str | None, as_json: bool
) -> None:
    """Show the account's endpoints."""
    from bridge.runpod.admin import get_endpoints

    found = get_endpoints(transport=transport, **_credentials(api_key_file, api_base_url))
    found.sort(key=lambda e: (str(e.get("name")), str(e.get("id"))))
    _show(found, as_json)
    if not as_json:
        click.echo(f"{len(found)} endpoint(s)")


@endpoints.command("create")
@click.argument("name")
@click.option("--template", "template_id", required=True, help="Template its workers run.")
@click.option("--gpu-ids", required=True, help="Comma-separated GPU pools, e.g. AMPERE_16.")
@click.option("--gpu-count", type=click.IntRange(1), default=1, show_default=True)
@click.option("--workers-min", type=click.IntRange(0), default=0, show_default=True)
@click.option("--workers-max", type=click.IntRange(0), default=3, show_default=True)
@click.option("--idle-timeout", type=click.IntRange(1), default=5, show_default=True,
              help="Seconds an idle worker stays up.")  # fmt: skip
@click.option("--scaler-type", type=click.Choice(["QUEUE_DELAY", "REQUEST_COUNT"]),
              default="QUEUE_DELAY", show_default=True)  # fmt: skip
@click.option("--scaler-value", type=click.IntRange(1), default=4, show_default=True)
@click.option("--locations", default=None, help="Comma-separated data centre ids.")
@click.option("--network-volume", "network_volume_id", default=None, help="Volume to attach.")
@click.option("--flashboot/--no-flashboot", default=False, show_default=True)
@_admin_options
def endpoints_create(
    name: str,
    workers_min: int,
    workers_max: int,
    api_base_url: str | None,
    api_key_file: Path | None,
    transport: str | None,
    as_json: bool,
    **settings: Any,
) -> None:
    """Create an endpoint NAME; prints it with its new id."""
    from bridge.runpod.admin import create_endpoint

    if workers_min > workers_max:
        raise click.BadParameter(
            f"--workers-min {workers_min} is more than --workers-max {workers_max}",
            param_hint="'--workers-min'",
        )
    created = create_endpoint(
        name,
        workers_min=workers_min,
        workers_max=workers_max,
        transport=transport,
        **settings,
        **_credentials(api_key_file, api_base_url),
    )
    _show(created, as_json)
    if not as_json:
        click.echo(f"created endpoint {created.get('id')}")


@endpoints.command("update-template")
@click.argument("endpoint_id")
@click.argument("template_id")
@_admin_options
def endpoints_update_template(
    endpoint_id: str,
    template_id: str,
    api_base_url: str | None,
    api_key_file: Path | None,
    transport: str | None,
    as_json: bool,
) -> None:
    """Switch ENDPOINT_ID to TEMPLATE_ID (its workers restart on it)."""
    from bridge.runpod.admin import update_endpoint_template

    updated = update_endpoint_template(
        endpoint_id, template_id, transport=transport, **_credentials(api_key_file, api_base_url)
    )
    _show(updated, as_json)
    if not as_json:
        click.echo(f"endpoint {endpoint_id} now runs template {template_id}")


@endpoints.command("delete")
@click.argument("endpoint_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_admin_options
def endpoints_delete(
    endpoint_id: str,
    yes: bool,
    api_base_url: str | None,
    api_key_file: Path | None,
    transport: str | None,
    as_json: bool,
) -> None:
    """Delete ENDPOINT_ID: its workers stop and its unfinished jobs are lost."""
    from bridge.runpod.admin import delete_endpoint

    credentials = _credentials(api_key_file, api_base_url)
    if not yes:
        click.confirm(f"Delete endpoint {endpoint_id!r} and its unfinished jobs?", abort=True)
    delete_endpoint(endpoint_id, transport=transport, **credentials)
    if as_json:
        click.echo(json.dumps({"deleted": endpoint_id}))
    else:
        click.echo(f"deleted endpoint {endpoint_id}")


COMMANDS = [top, endpoints]
