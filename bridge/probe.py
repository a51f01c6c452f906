"""``bridge ping``: is a part of the bridge alive? Exit 0 when it answers, 1 when not.
Container health checks (Dockerfile, docker-compose.yml) call it.

- ``redis``: PING the bridge's Redis.
- ``worker``: asks one worker node (default ``celery@HOSTNAME``, what ``bridge worker`` is
  called in a container) whether its bridge serves: its event loop answers, its lease is
  fresh, its JSON door and listener run, Redis answers (not only Celery's own ping).
- ``beat``: the newest health snapshot of any route is younger than three of its
  intervals (so beat sends the checks, and a worker runs them).
- ``emulator``: the emulator's ``/_emulator/stats`` answers with the configured key.
- ``webhooks``: the webhook receiver's ``/healthz`` answers.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import click

from bridge.errors import ConfigError

TARGETS = ("redis", "worker", "beat", "emulator", "webhooks")


class Unhealthy(Exception):
    """The part did not answer as it should; the message says what was seen."""


def ping_redis(settings: Any, timeout: float) -> str:
    import redis  # here, not at the top: `bridge --help` stays fast

    from bridge.core.connection import sync_redis

    client = sync_redis(
        settings.redis_url, settings.sentinel_master,
        socket_connect_timeout=timeout, socket_timeout=timeout,
    )  # fmt: skip
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise Unhealthy(f"Redis does not answer: {type(exc).__name__}") from None
    finally:
        client.close()
    return "Redis answers"


def ping_worker(settings: Any, node: str | None, timeout: float) -> str:
    import redis

    from bridge.worker.app import create_app

    node = node or f"celery@{socket.gethostname()}"
    app = create_app(settings)
    try:
        replies = app.control.broadcast(
            "bridge_health", destination=[node], reply=True, timeout=timeout
        )
    except (redis.RedisError, OSError) as exc:
        raise Unhealthy(f"cannot reach the broker: {type(exc).__name__}") from None
    finally:
        app.close()
    answer = next((r[node] for r in replies or [] if node in r), None)
    if answer is None:
        raise Unhealthy(f"worker {node} does not answer")
    if not answer.get("ok"):
        problems = "; ".join(answer.get("problems") or []) or "unknown"
        raise Unhealthy(f"worker {node} answers but does not serve: {problems}")
    return f"worker {node} serves ({answer.get('in_flight', 0)} request(s) in flight)"


def ping_beat(settings: Any, timeout: float) -> str:
    import redis

    from bridge.core.connection import sync_redis

    intervals = {n: r.health_interval_s for n, r in settings.routes.items() if r.health_interval_s}
    if not intervals:
        return "no route has health checks: nothing to see of beat"
    client = sync_redis(
        settings.redis_url, settings.sentinel_master,
        socket_connect_timeout=timeout, socket_timeout=timeout,
    )  # fmt: skip
    try:
        from bridge.core.keys import keys_for

        keys = keys_for(settings)
        raw = client.mget([keys.health(name) for name in intervals])
    except (redis.RedisError, OSError) as exc:
        raise Unhealthy(f"Redis does not answer: {type(exc).__name__}") from None
    finally:
        client.close()
    now = time.time()
    for name, value in zip(intervals, raw, strict=True):
        if value and now - float(json.loads(value)["at"]) <= 3 * intervals[name] + timeout:
            return f"route {name}'s health snapshot is fresh"
    raise Unhealthy("no fresh health snapshot: beat or every worker is down")


def ping_http(
    url: str, timeout: float, key: str | None = None, verify: ssl.SSLContext | bool = True
) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=timeout, verify=verify)
    except httpx.HTTPError as exc:
        raise Unhealthy(f"{url} does not answer: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise Unhealthy(f"{url} answered HTTP {response.status_code}")
    return f"{url} answers"


def _emulator(url: str | None, timeout: float) -> str:
    from bridge.emulator.settings import EmulatorSettings

    settings = EmulatorSettings.load()
    base = url or f"{settings.scheme}://127.0.0.1:{settings.port}"
    keys = settings.accepted_keys()
    # Its own certificate (often self-signed) is the one to trust.
    verify: ssl.SSLContext | bool = True
    if settings.tls_cert_file is not None:
        verify = ssl.create_default_context(cafile=str(settings.tls_cert_file))
    return ping_http(base.rstrip("/") + "/_emulator/stats", timeout,
                     keys[0] if keys else None, verify)  # fmt: skip


@click.command()
@click.argument("target", type=click.Choice(TARGETS))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Routes file (TOML) [env: BRIDGE_CONFIG].",
)
@click.option("--node", default=None, help="worker: the node name [default: celery@HOSTNAME].")
@click.option("--url", default=None, help="emulator, webhooks: the base URL to ask.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds.")
def ping(
    target: str, config_path: Path | None, node: str | None, url: str | None, timeout: float
) -> None:
    """Exit 0 when TARGET (redis, worker, beat, emulator, webhooks) is alive, else 1."""
    try:
        if target == "emulator":
            said = _emulator(url, timeout)
        else:
            from bridge.settings import BridgeSettings

            settings = BridgeSettings.load(config_path)
            if target == "redis":
                said = ping_redis(settings, timeout)
            elif target == "worker":
                said = ping_worker(settings, node, timeout)
            elif target == "beat":
                said = ping_beat(settings, timeout)
            else:
                base = url or f"http://127.0.0.1:{settings.webhook_port}"
                said = ping_http(base.rstrip("/") + "/healthz", timeout)
    except (Unhealthy, ConfigError) as exc:
        click.echo(f"{target}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{target}: ok ({said})")
