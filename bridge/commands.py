"""The bridge's operator commands: ``worker``, ``beat``, ``submit``, ``cancel``,
``health``, ``purge``, ``webhooks``, ``dlq``, and the options they share. Heavy imports
happen inside each command; their failures become ``Error: …`` in :mod:`bridge.cli`."""

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

from bridge.errors import ConfigError

MODES = ("poll", "stream", "sync", "webhook")
"""``bridge.settings.Mode``'s values, here so ``bridge --help`` needs no pydantic."""

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Routes file (TOML) [env: BRIDGE_CONFIG; default: built-in emulator routes].",
)


def load_settings(config_path: Path | None) -> Any:
    """The bridge's settings; a ConfigError becomes ``Error: …`` (see bridge.cli)."""
    from bridge.settings import BridgeSettings

    if config_path is not None:
        os.environ["BRIDGE_CONFIG"] = str(config_path)  # the Celery app reads it too
    return BridgeSettings.load(config_path)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _AliasedOption(click.Option):
    """An option with spellings accepted but not shown in ``--help``."""

    def __init__(self, *args: Any, hidden_aliases: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_aliases = hidden_aliases

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return " / ".join(f"'{o}'" for o in self.opts if o not in self.hidden_aliases)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown, self.opts = self.opts, [o for o in self.opts if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


log_level_option = click.option(
    "--log-level",
    "-l",
    "--loglevel",  # Celery's spelling, for its users' fingers and scripts
    "log_level",
    cls=_AliasedOption,
    hidden_aliases=("--loglevel",),
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    metavar="LEVEL",
    default="INFO",
    envvar="BRIDGE_LOG_LEVEL",
    show_envvar=True,
    show_default=True,
    help=f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]} (any case).",
)

log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="BRIDGE_LOG_FORMAT",
    show_envvar=True,
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


def why(exc: OSError) -> str:
    """``Address already in use``, not ``[Errno 98] error while attempting to bind …``."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def request_id_argument(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A request id as the envelope takes it (``bridge.ingress.envelope.REQUEST_ID``)."""
    from bridge.ingress.envelope import REQUEST_ID

    if value is not None and not REQUEST_ID.fullmatch(value):
        raise click.BadParameter(
            f"{value!r} is not a request id: 1 to 200 of A-Z a-z 0-9 : _ . -", ctx, param
        )
    return value


class _WorkerCommand(click.Command):
    """``bridge worker -n w1`` says where Celery's options go instead of just refusing."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            hint = f"Celery's own options go after `--`: bridge worker -- {exc.option_name} …"
            raise click.NoSuchOption(exc.option_name, f"{exc.message} ({hint})", ctx=ctx) from None


@click.command(
    cls=_WorkerCommand,
    epilog="Celery's own worker options go after `--`, for example:\n\n\b\n"
    "  bridge worker -Q bridge-sdxl -- --hostname=gpu1@%h --without-gossip",
)
@config_option
@click.option("--pool", default="threads", show_default=True, help="Celery pool.")
@click.option("--concurrency", "-c", default=4, show_default=True, help="Celery slots.")
@log_level_option
@click.option("--queues", "-Q", default=None, help="Queues [default: every route's queue].")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics [default: off].",
)
@log_format_option
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- CELERY_ARGS]...")
def worker(
    config_path: Path | None,
    pool: str,
    concurrency: int,
    log_level: str,
    queues: str | None,
    metrics_port: int | None,
    log_format: str,
    celery_args: tuple[str, ...],
) -> None:
    """Run a bridge worker: a Celery worker on every route's queue (arguments after
    `--` go to Celery's worker)."""
    if metrics_port is not None:
        os.environ["BRIDGE_METRICS_PORT"] = str(metrics_port)  # the Celery app reads it
    settings = load_settings(config_path)
    setup_logs(settings, log_format, log_level)
    from bridge.worker.app import app

    queues = queues or ",".join(
        sorted({settings.default_queue, *(r.queue for r in settings.routes.values())})
    )
    argv = [
        "worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--loglevel={log_level}",
        f"--queues={queues}", "--task-events", *celery_args,
    ]  # fmt: skip
    quiet = ["--quiet"] if log_format == "json" else []  # no banner among the JSON lines
    app.worker_main([*quiet, *argv])


@click.command()
@config_option
@log_level_option
@click.option("--schedule", default=None, help="Beat's schedule file [default: a temp file].")
@log_format_option
def beat(config_path: Path | None, log_level: str, schedule: str | None, log_format: str) -> None:
    """Run Celery beat with the health-check and purge schedule built from the routes."""
    setup_logs(load_settings(config_path), log_format, log_level)
    import tempfile

    from bridge.worker.app import app

    schedule = schedule or str(Path(tempfile.gettempdir()) / f"bridge-beat-{os.getuid()}")
    quiet = ["--quiet"] if log_format == "json" else []
    app.start([*quiet, "beat", f"--loglevel={log_level}", f"--schedule={schedule}"])


@click.command()
@config_option
@click.argument("route")
@click.argument("job_input")
@click.option("--mode", type=click.Choice(MODES), default=None, help="[default: the route's]")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=300,
    show_default=True,
    help="Seconds to wait for the result (the request goes on after).",
)
@click.option(
    "--id",
    "request_id",
    default=None,
    callback=request_id_argument,
    help="Request id (idempotency key) [default: a new UUID].",
)
def submit(
    config_path: Path | None,
    route: str,
    job_input: str,
    mode: str | None,
    timeout: float,
    request_id: str | None,
) -> None:
    """Send a request through the JSON door and show it until its result."""
    from bridge.ingress.envelope import json_problem
    from bridge.producer import JsonDoorClient

    settings = load_settings(config_path)
    try:
        data = json.loads(job_input)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"JOB_INPUT is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise click.ClickException('JOB_INPUT must be a JSON object, e.g. \'{"prompt": "hi"}\'')
    if problem := json_problem(data, settings.max_input_depth):
        raise click.ClickException(f"JOB_INPUT cannot be sent: {problem}")
    settings.route(route)  # an unknown route: an error before anything is sent
    client = JsonDoorClient(settings)
    if why := client.nobody_reading():
        click.echo(f"Warning: {why}; the request waits in the stream until one reads it", err=True)
    request_id = request_id or str(uuid.uuid4())
    status = client.submit_and_show(route, data, mode=mode, timeout=timeout, request_id=request_id)
    sys.exit(0 if status == "COMPLETED" else 1)


@click.command()
@config_option
@click.argument("request_id", callback=request_id_argument)
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
    """Show endpoint health per route (the last beat snapshots, or --live); with --live,
    exit 1 when no endpoint answers."""
    from rich.console import Console
    from rich.table import Table

    from bridge.producer import JsonDoorClient

    settings = load_settings(config_path)
    names = [route] if route else sorted(settings.routes)
    for name in names:
        settings.route(name)
    client = JsonDoorClient(settings)
    table = Table("route", "endpoint", "age", "in queue", "in progress", "done", "failed",
                  "workers (idle/running)", "breaker", "warnings")  # fmt: skip
    breakers = _Breakers(client, tolerant=live)  # --live needs no Redis to ask endpoints
    unreachable: list[str] = []
    for name in names:
        endpoint_id = settings.routes[name].endpoint_id
        snap = client.health(name, live=live)
        if snap is None:
            table.add_row(name, endpoint_id, "-", *["-"] * 5, breakers(endpoint_id), "no snapshot")
            continue
        if live and not snap.get("ok"):
            unreachable.append(f"{name} ({endpoint_id}): {snap.get('error')}")
        jobs = (snap.get("health") or {}).get("jobs") or {}
        workers = (snap.get("health") or {}).get("workers") or {}
        age = f"{time.time() - snap['at']:.0f}s"
        warnings = "; ".join(snap.get("warnings") or []) or ("" if snap.get("ok") else "error")
        table.add_row(
            name, snap["endpoint_id"], age, *(str(jobs.get(k, "-")) for k in
            ("inQueue", "inProgress", "completed", "failed")),
            f"{workers.get('idle', '-')}/{workers.get('running', '-')}",
            breakers(endpoint_id), warnings,
        )  # fmt: skip
    Console().print(table)
    if breakers.problem:
        click.echo(f"Warning: breaker states unknown: {breakers.problem}", err=True)
    if live and len(unreachable) == len(names):
        raise click.ClickException("no endpoint answered:\n  " + "\n  ".join(unreachable))


class _Breakers:
    """Each endpoint's breaker state; ``tolerant``: ``?`` when Redis cannot say."""

    def __init__(self, client: Any, tolerant: bool) -> None:
        self.client = client
        self.tolerant = tolerant
        self.problem = ""

    def __call__(self, endpoint_id: str) -> str:
        if self.problem:
            return "?"
        import redis

        try:
            return str(self.client.breaker(endpoint_id))
        except redis.RedisError as exc:
            if not self.tolerant:
                raise
            self.problem = f"cannot reach Redis: {exc}"
            return "?"


@click.command()
@config_option
@click.argument("route")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(config_path: Path | None, route: str, yes: bool) -> None:
    """Remove every queued job of ROUTE's endpoint; our purged requests get CANCELLED."""
    from bridge.producer import JsonDoorClient

    settings = load_settings(config_path)
    config = settings.route(route)
    if not yes:
        click.confirm(
            f"Purge every queued job of endpoint {config.endpoint_id!r} (route {route})?",
            abort=True,
        )
    result = JsonDoorClient(settings).purge(route)
    click.echo(f"purged {result.get('removed', 0)} queued job(s) of {config.endpoint_id}")


@click.command()
@config_option
@click.option("--host", default=None, help="Address [default: BRIDGE_WEBHOOK_HOST, 127.0.0.1].")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port [default: BRIDGE_WEBHOOK_PORT, 8081].",
)
@log_level_option
@log_format_option
def webhooks(
    config_path: Path | None, host: str | None, port: int | None, log_level: str, log_format: str
) -> None:
    """Run the webhook receiver (mode 'webhook'): it wakes trackers, nothing more."""
    import asyncio

    from aiohttp import web

    from bridge.core.connection import async_redis
    from bridge.core.keys import keys_for
    from bridge.ingress.webhooks import create_receiver

    settings = load_settings(config_path)
    setup_logs(settings, log_format, log_level, celery=False)
    host = host or settings.webhook_host
    port = port if port is not None else settings.webhook_port

    async def serve() -> None:
        redis = async_redis(settings.redis_url, settings.sentinel_master)
        runner = web.AppRunner(create_receiver(redis, keys_for(settings)), access_log=None)
        try:
            await redis.ping()  # useless without Redis: say so now, not at the first webhook
            await runner.setup()
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise click.ClickException(f"cannot listen on {host}:{port}: {why(exc)}") from None
            click.echo(f"webhook receiver listening on http://{host}:{port}/webhook/")
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            await redis.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


@click.group()
def dlq() -> None:
    """The dead-letter stream: requests that were refused or could not be submitted."""


def entry_id_argument(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """An id Redis can look up: XRANGE refuses any other with an error of its own. Not
    a usage error (exit 2) but "no such dead letter" (exit 1), as for an unknown id."""
    from bridge.dlq import ENTRY_ID

    if value is not None and not ENTRY_ID.fullmatch(value):
        raise click.ClickException(
            f"no dead letter {value!r}: not an entry id (like 1700000000000-0; "
            "`bridge dlq list` shows them)"
        )
    return value


@dlq.command("list")
@config_option
@click.option("--route", default=None, help="Only this route's entries.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="The newest N (0: all).",
)
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
@click.argument("entry_id", required=False, callback=entry_id_argument)
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
        raise click.ClickException(f"no dead letter {entry_id} (`bridge dlq list` shows them)")
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
