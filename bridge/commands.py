"""The bridge's operator commands: ``worker``, ``beat``, ``submit``, ``cancel``,
``health``, ``purge``. Heavy imports happen inside each command."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click

from bridge.errors import BridgeError, ConfigError

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Routes file (TOML) [env: BRIDGE_CONFIG; default: built-in emulator routes].",
)


def load_settings(config_path: Path | None) -> Any:
    from bridge.settings import BridgeSettings

    if config_path is not None:
        os.environ["BRIDGE_CONFIG"] = str(config_path)  # the Celery app reads it too
    try:
        return BridgeSettings.load(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as plain text or one JSON object per line.",
)


def setup_logs(settings: Any, log_format: str, level: str, celery: bool = True) -> None:
    """Log in ``log_format`` from now on (Celery's own lines too, once it starts), with
    the routes' API keys masked."""
    from bridge import logs

    for route in settings.routes.values():
        with contextlib.suppress(ConfigError):  # a route without a key fails later, clearly
            logs.register_secret(route.api_key().get_secret_value())
    logs.configure(log_format, level)
    if celery:
        logs.configure_celery(log_format)


def route_config(settings: Any, name: str) -> Any:
    """The route ``name``, or a clear error naming the configured ones."""
    try:
        return settings.route(name)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@config_option
@click.option("--pool", default="threads", show_default=True, help="Celery pool.")
@click.option("--concurrency", "-c", default=4, show_default=True, help="Celery slots.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--queues", "-Q", default=None, help="Queues [default: every route's queue].")
@click.option(
    "--metrics-port", type=int, default=None, help="Serve Prometheus metrics [default: off]."
)
@log_format_option
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    config_path: Path | None,
    pool: str,
    concurrency: int,
    loglevel: str,
    queues: str | None,
    metrics_port: int | None,
    log_format: str,
    celery_args: tuple[str, ...],
) -> None:
    """Run a bridge worker (a Celery worker; extra arguments go to Celery)."""
    if metrics_port is not None:
        os.environ["BRIDGE_METRICS_PORT"] = str(metrics_port)  # the Celery app reads it
    settings = load_settings(config_path)
    setup_logs(settings, log_format, loglevel)
    from bridge.worker.app import app

    queues = queues or ",".join(
        sorted({settings.default_queue, *(r.queue for r in settings.routes.values())})
    )
    argv = [
        "worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--loglevel={loglevel}",
        f"--queues={queues}", "--task-events", *celery_args,
    ]  # fmt: skip
    quiet = ["--quiet"] if log_format == "json" else []  # no banner among the JSON lines
    app.worker_main([*quiet, *argv])


@click.command()
@config_option
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--schedule", default=None, help="Beat's schedule file [default: a temp file].")
@log_format_option
def beat(config_path: Path | None, loglevel: str, schedule: str | None, log_format: str) -> None:
    """Run Celery beat with the health-check and purge schedule built from the routes."""
    setup_logs(load_settings(config_path), log_format, loglevel)
    import tempfile

    from bridge.worker.app import app

    schedule = schedule or str(Path(tempfile.gettempdir()) / f"bridge-beat-{os.getuid()}")
    quiet = ["--quiet"] if log_format == "json" else []
    app.start([*quiet, "beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])


@click.command()
@config_option
@click.argument("route")
@click.argument("job_input")
@click.option("--mode", type=click.Choice(["poll", "stream", "sync", "webhook"]), default=None)
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait.")
@click.option("--id", "request_id", default=None, help="Request id (idempotency key).")
def submit(
    config_path: Path | None,
    route: str,
    job_input: str,
    mode: str | None,
    timeout: float,
    request_id: str | None,
) -> None:
    """Send a request through the JSON door and show it until its result."""
    from bridge.producer import JsonDoorClient

    settings = load_settings(config_path)
    try:
        data = json.loads(job_input)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"JOB_INPUT is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise click.ClickException('JOB_INPUT must be a JSON object, e.g. \'{"prompt": "hi"}\'')
    route_config(settings, route)  # clear error for an unknown route before sending anything
    client = JsonDoorClient(settings)
    request_id = request_id or str(uuid.uuid4())
    status = client.submit_and_show(route, data, mode=mode, timeout=timeout, request_id=request_id)
    sys.exit(0 if status == "COMPLETED" else 1)


@click.command()
@config_option
@click.argument("request_id")
def cancel(config_path: Path | None, request_id: str) -> None:
    """Cancel a request (its GPU job too); exit 0 when the request was found."""
    from bridge.producer import JsonDoorClient

    state = JsonDoorClient(load_settings(config_path)).cancel(request_id)
    messages = {
        "unknown": "no such request yet: it will be cancelled if it arrives",
        "final": "the request had already finished",
    }
    click.echo(f"{request_id}: {messages.get(state, f'cancel sent (it was {state})')}")
    sys.exit(1 if state == "unknown" else 0)


@click.command()
@config_option
@click.argument("route", required=False)
@click.option("--live", is_flag=True, help="Ask the endpoints now instead of the snapshots.")
def health(config_path: Path | None, route: str | None, live: bool) -> None:
    """Show endpoint health per route (the last beat snapshots, or --live)."""
    from rich.console import Console
    from rich.table import Table

    from bridge.producer import JsonDoorClient

    settings = load_settings(config_path)
    names = [route] if route else sorted(settings.routes)
    for name in names:
        route_config(settings, name)
    client = JsonDoorClient(settings)
    table = Table("route", "endpoint", "age", "in queue", "in progress", "done", "failed",
                  "workers (idle/running)", "breaker", "warnings")  # fmt: skip
    for name in names:
        try:
            snap = client.health(name, live=live)
        except ConfigError as exc:  # --live: no API key for the route
            raise click.ClickException(str(exc)) from None
        if snap is None:
            breaker = client.breaker(settings.routes[name].endpoint_id)
            table.add_row(
                name, settings.routes[name].endpoint_id, "-", *["-"] * 5, breaker, "no snapshot"
            )
            continue
        jobs = (snap.get("health") or {}).get("jobs") or {}
        workers = (snap.get("health") or {}).get("workers") or {}
        age = f"{time.time() - snap['at']:.0f}s"
        warnings = "; ".join(snap.get("warnings") or []) or ("" if snap.get("ok") else "error")
        table.add_row(
            name, snap["endpoint_id"], age, *(str(jobs.get(k, "-")) for k in
            ("inQueue", "inProgress", "completed", "failed")),
            f"{workers.get('idle', '-')}/{workers.get('running', '-')}",
            client.breaker(snap["endpoint_id"]), warnings,
        )  # fmt: skip
    Console().print(table)


@click.command()
@config_option
@click.argument("route")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(config_path: Path | None, route: str, yes: bool) -> None:
    """Remove every queued job of ROUTE's endpoint; our purged requests get CANCELLED."""
    from bridge.producer import JsonDoorClient

    settings = load_settings(config_path)
    config = route_config(settings, route)
    if not yes:
        click.confirm(
            f"Purge every queued job of endpoint {config.endpoint_id!r} (route {route})?",
            abort=True,
        )
    try:
        result = JsonDoorClient(settings).purge(route)
    except BridgeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"purged {result.get('removed', 0)} queued job(s) of {config.endpoint_id}")


@click.command()
@config_option
@click.option("--host", default=None, help="Address [default: BRIDGE_WEBHOOK_HOST, 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: BRIDGE_WEBHOOK_PORT, 8081].")
@click.option("--log-level", default="INFO", show_default=True, help="Python log level.")
@log_format_option
def webhooks(
    config_path: Path | None, host: str | None, port: int | None, log_level: str, log_format: str
) -> None:
    """Run the webhook receiver (mode 'webhook'): it wakes trackers, nothing more."""
    import asyncio

    from aiohttp import web
    from redis.asyncio import Redis

    from bridge.core.keys import keys_for
    from bridge.ingress.webhooks import create_receiver

    settings = load_settings(config_path)
    setup_logs(settings, log_format, log_level, celery=False)
    host = host or settings.webhook_host
    port = port if port is not None else settings.webhook_port

    async def serve() -> None:
        redis = Redis.from_url(settings.redis_url)
        runner = web.AppRunner(create_receiver(redis, keys_for(settings)), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        click.echo(f"webhook receiver listening on http://{host}:{port}/webhook/")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            await redis.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


@click.group()
def dlq() -> None:
    """The dead-letter stream: requests that were refused or could not be submitted."""


@dlq.command("list")
@config_option
@click.option("--route", default=None, help="Only this route's entries.")
@click.option("--limit", default=50, show_default=True, help="The newest N (0: all).")
def dlq_list(config_path: Path | None, route: str | None, limit: int) -> None:
    """Show dead letters, newest last."""
    from rich.console import Console
    from rich.table import Table

    from bridge.dlq import DeadLetters

    letters = DeadLetters(load_settings(config_path)).list(route, limit)
    table = Table("entry", "when", "route", "request", "reason", "message", "job")
    for d in letters:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.at))
        table.add_row(d.entry_id, when, d.route, d.request_id, d.reason, d.message[:80], d.job_id)
    Console().print(table)
    click.echo(f"{len(letters)} dead letter(s)")


@dlq.command("replay")
@config_option
@click.argument("entry_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every replayable entry.")
@click.option("--route", default=None, help="With --all: only this route's entries.")
def dlq_replay(
    config_path: Path | None, entry_id: str | None, replay_all: bool, route: str | None
) -> None:
    """Send dead-lettered requests again, with their original request ids."""
    from bridge.dlq import DeadLetters

    if bool(entry_id) == replay_all:
        raise click.UsageError("give one ENTRY_ID or --all")
    letters = DeadLetters(load_settings(config_path))
    chosen = letters.list(route, limit=0) if replay_all else [letters.get(str(entry_id))]
    if chosen == [None]:
        raise click.ClickException(f"no dead letter {entry_id}")
    replayed = skipped = 0
    for letter in chosen:
        assert letter is not None
        try:
            click.echo(f"replayed {letter.entry_id} as request {letters.replay(letter)}")
            replayed += 1
        except ValueError as exc:
            click.echo(f"skipped: {exc}")
            skipped += 1
    click.echo(f"{replayed} replayed, {skipped} skipped")
    if skipped and not replayed:
        sys.exit(1)


@dlq.command("purge")
@config_option
@click.option("--route", default=None, help="Only this route's entries.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(config_path: Path | None, route: str | None, yes: bool) -> None:
    """Remove dead letters (all, or one route's)."""
    from bridge.dlq import DeadLetters

    letters = DeadLetters(load_settings(config_path))
    if not yes:
        what = f"route {route}'s" if route else "all"
        click.confirm(f"Remove {what} dead letters?", abort=True)
    click.echo(f"removed {letters.purge(route)} dead letter(s)")


COMMANDS = [worker, beat, submit, cancel, health, purge, webhooks, dlq]
