"""The bridge's configuration: one pydantic-settings root (env prefix ``BRIDGE_``) and
the routes file loader.

Routes come from a TOML file (``--config`` / ``BRIDGE_CONFIG``, e.g.
``config/bridge.toml``): one ``[routes.NAME]`` table per route. With no file, the routes
``echo``, ``stream`` and ``fail`` point at the emulator's endpoints of those names.
An API key is never written in the file: a route names the environment variable or the
secret file that holds it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from bridge.configfiles import Problems, errors_of, read_toml
from bridge.errors import ConfigError

Mode = Literal["poll", "stream", "sync", "webhook"]
Delivery = Literal["at_least_once", "at_most_once"]
DEV_API_KEY = "rp-emulator-dev-key"  # the emulator's documented development key

RUNPOD_BUDGETS: dict[str, int] = {
    "run": 1000,
    "runsync": 2000,
    "status": 2000,
    "status-sync": 2000,
    "stream": 2000,
    "cancel": 100,
    "purge-queue": 2,
}
"""RunPod's per-endpoint request limits per 10 s, the default budgets of every route."""


_VALUES_GIVEN: ContextVar[bool] = ContextVar("bridge_settings_values_given", default=False)
"""Set while :meth:`BridgeSettings.load` builds the settings from values it read itself."""

_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@]*:)(?P<password>[^@/]*)@", re.I)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs, reprs, ``inspect conf``)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***@", url)


class RouteConfig(BaseModel):
    """One route: a name producers use, and the endpoint it sends to."""

    model_config = ConfigDict(extra="forbid")

    endpoint_id: str = Field(
        min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="the endpoint's id"
    )
    base_url: str = Field(
        "https://api.runpod.ai/v2",
        pattern=r"^https?://",
        description="queue API base: RunPod's, or an emulator's http://HOST:PORT/v2",
    )
    api_key_env: str | None = Field("RUNPOD_API_KEY", description="variable holding the key")
    api_key_file: Path | None = Field(None, description="file holding the key (wins)")
    mode: Mode = Field("poll", description="how its jobs are followed, unless a request says")
    policy: dict[str, Any] | None = Field(None, description="default RunPod policy")
    queue: str = Field("bridge", min_length=1, description="Celery queue of its requests")
    max_in_flight: int = Field(
        1000, ge=1, description="jobs at the endpoint at once, across every worker"
    )
    budgets: dict[str, int] = Field(
        default_factory=lambda: dict(RUNPOD_BUDGETS),
        description="requests per operation per window, shared by all workers; an "
        "operation left out keeps RunPod's limit",
    )
    budget_window_s: float = Field(10.0, gt=0, description="the budgets' window")
    health_interval_s: float | None = Field(
        30.0, ge=0, description="0 (a TOML file has no None) or None: no health checks"
    )
    purge_every_s: float | None = Field(None, gt=0, description="purge the queue this often")
    purge_crontab: str | None = Field(None, description="or on this crontab (5 fields)")
    result_ttl_s: int = Field(86_400, ge=1, description="how long final results are kept")
    reply_ttl_s: int = Field(3_600, ge=1, description="how long reply lists are kept")
    delivery: Delivery = Field(
        "at_least_once",
        description="a worker died between sending /run and recording the job id: send "
        "again, or fail to the dead letters",
    )
    submit_attempts: int = Field(5, ge=1, description="tries of POST /run before failing")
    give_up_s: float = Field(
        86_400.0,
        gt=0,
        description="endpoint errors (5xx, timeouts, 429) for this long in a row end a "
        "request FAILED endpoint_unreachable (RunPod keeps a job 24 h by default)",
    )
    breaker_wait_s: float = Field(
        3_600.0,
        gt=0,
        description="an accepted request waits this long at most for an open breaker "
        "before FAILED endpoint_unavailable",
    )
    reply_prefixes: list[str] | None = Field(
        None,
        description="reply_to must start with one of these (None: the global setting)",
    )
    max_payload_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="larger JSON-door messages are REJECTED"
    )
    long_poll_below: int = Field(
        200, ge=0, description="hold status requests while fewer jobs than this are in flight"
    )
    webhook_safety_poll_s: float = Field(
        30.0, gt=0, description="mode webhook: the slow poll behind the webhook"
    )
    default_emulator_key: bool = Field(
        False, description="fall back to the emulator's development key (built-in routes)"
    )

    @model_validator(mode="after")
    def _check(self) -> RouteConfig:
        unknown = set(self.budgets) - set(RUNPOD_BUDGETS)
        if unknown:
            raise ValueError(f"unknown budget operation(s): {', '.join(sorted(unknown))}")
        # A partial table changes only the operations it names.
        self.budgets = {**RUNPOD_BUDGETS, **self.budgets}
        if self.purge_crontab is not None and len(self.purge_crontab.split()) != 5:
            raise ValueError("purge_crontab must have 5 fields: minute hour day month weekday")
        per_purge = self.budget_window_s / max(1, self.budgets["purge-queue"])
        if self.purge_every_s is not None and self.purge_every_s < per_purge:
            raise ValueError(
                f"purge_every_s {self.purge_every_s:g} is shorter than the purge budget "
                f"allows ({self.budgets['purge-queue']} per {self.budget_window_s:g} s: "
                f"at least {per_purge:g} s)"
            )
        return self

    def api_key(self) -> SecretStr:
        """Read the key now (files and variables may be rotated while running)."""
        if self.api_key_file is not None:
            try:
                return SecretStr(self.api_key_file.read_text(encoding="utf-8").strip())
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the API key file {self.api_key_file}: {exc.strerror}"
                ) from None
        value = os.environ.get(self.api_key_env) if self.api_key_env else None
        if value:
            return SecretStr(value)
        if self.default_emulator_key:
            return SecretStr(DEV_API_KEY)
        raise ConfigError(
            f"no API key for endpoint {self.endpoint_id!r}: set {self.api_key_env or 'a key'} "
            "or api_key_file"
        )


class BridgeSettings(BaseSettings):
    """Everything the bridge worker, beat and CLI can be told (env prefix ``BRIDGE_``)."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", env_nested_delimiter="__", extra="ignore"
    )

    config: Path | None = Field(None, description="routes file (TOML)")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="bridge state, JSON door: redis://, rediss://, unix:// or "
        "sentinel://host:port;sentinel://host:port[/db] (see docs/sentinel.md)",
    )
    sentinel_master: str | None = Field(
        None,
        description="the primary's name the sentinels watch (`sentinel monitor NAME ...`): "
        "needed by every sentinel:// URL (state, broker, backend)",
    )
    broker_url: str | None = Field(None, description="Celery broker; default redis_url")
    result_backend: str | None = Field(None, description="Celery results; default redis_url")
    emulator_url: str = Field("http://127.0.0.1:8000", description="for the default routes")
    requests_stream: str = Field("bridge:requests", description="the JSON door's stream")
    consumer_group: str = Field("bridge", description="the JSON door's consumer group")
    dlq_stream: str = Field("bridge:dlq", description="dead letters, each with its reason")
    key_prefix: str = Field("bridge", description="prefix of every Redis key we write")
    default_queue: str = Field("bridge", description="Celery queue of tasks without a route")
    webhook_url: str | None = Field(
        None, description="public base URL of the webhook receiver (webhook mode)"
    )
    webhook_host: str = Field("127.0.0.1", description="where `bridge webhooks` listens")
    webhook_port: int = Field(8081, ge=0, le=65535, description="its port")
    submit_timeout_s: float = Field(
        30.0, gt=0, description="a task's limit for recording and handing over its request"
    )
    full_recovery_s: float = Field(
        60.0, gt=0, description="each worker looks at every in-flight request this often"
    )
    reap_interval_s: float | None = Field(
        60.0, gt=0, description="beat: adopt requests of dead workers this often (None: never)"
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve Prometheus metrics on this port (worker)"
    )
    metrics_host: str = Field("127.0.0.1", description="the metrics' address (0.0.0.0: all)")
    internal_attempts: int = Field(
        5, ge=1, description="unexpected errors a request survives before internal_error"
    )
    reply_prefixes: list[str] = Field(
        default_factory=list,
        description="reply_to must start with one of these (empty: any key the bridge "
        "and Celery do not own)",
    )
    max_input_depth: int = Field(
        64, ge=1, le=1000, description="deepest nesting of lists and objects in an input"
    )
    route_handoff: bool = Field(
        True,
        description="a JSON-door request for a route this worker does not serve goes to a "
        "live worker that does (refused unknown_route only when none does)",
    )
    max_entry_failures: int = Field(
        5, ge=1, description="a JSON-door entry failing this often is dead-lettered"
    )
    visibility_timeout_s: int = Field(
        300, gt=0, description="Redis broker: an unacknowledged task is redelivered after this"
    )
    breaker_threshold: int = Field(
        10, ge=1, description="consecutive endpoint failures that open it"
    )
    breaker_open_s: float = Field(30.0, gt=0, description="how long it stays open before a probe")
    lease_ttl_s: float = Field(
        15.0,
        gt=0,
        description="a worker's lease; once it expired, a worker without a presence "
        "connection is taken for dead (see adopt_after_s)",
    )
    recovery_interval_s: float = Field(
        1.0, gt=0, description="how often the lease is renewed and orphans looked for"
    )
    adopt_after_s: float = Field(
        3.0,
        gt=0,
        description="a worker whose presence connection is gone is taken for dead once its "
        "lease was not renewed for this long (at least twice the renewal interval)",
    )
    stale_entry_s: float = Field(
        30.0, gt=0, description="JSON-door entries unacked this long are re-read"
    )
    routes: dict[str, RouteConfig] = Field(
        default_factory=dict, description="by name; none: echo, stream, fail on the emulator"
    )

    @property
    def renew_every_s(self) -> float:
        """How often a worker renews its lease and looks for orphans."""
        return min(self.lease_ttl_s / 3, self.recovery_interval_s)

    @property
    def hung_after_s(self) -> float:
        """A worker still connected but silent this long is hung: its requests are
        adopted all the same."""
        return max(60.0, 4 * self.lease_ttl_s)

    @model_validator(mode="after")
    def _check_adoption(self) -> BridgeSettings:
        if self.adopt_after_s < 2 * self.renew_every_s:
            raise ValueError(
                f"adopt_after_s {self.adopt_after_s:g} must be at least twice the lease "
                f"renewal interval ({self.renew_every_s:g} s, the smaller of "
                "recovery_interval_s and lease_ttl_s / 3): a live worker would be taken "
                "for dead between two renewals"
            )
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        from redis.connection import parse_url  # here: `bridge --help` stays fast

        from bridge.core.connection import is_sentinel

        if is_sentinel(url):
            return url  # checked with its master name, in _sentinel_urls
        try:
            parse_url(url)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        except ValueError as exc:  # its messages name the scheme or the port, not the URL
            raise ValueError(f"not a URL redis-py can use: {exc}") from None
        return url

    @model_validator(mode="after")
    def _sentinel_urls(self) -> BridgeSettings:
        from bridge.core.connection import is_sentinel, parse_sentinel

        # broker and backend default to redis_url: checked as Celery will use them
        for name, url in (("redis_url", self.redis_url), ("broker_url", self.broker),
                          ("result_backend", self.backend)):  # fmt: skip
            if url and is_sentinel(url):
                if name != "redis_url" and url.lower().startswith("sentinels:"):
                    raise ValueError(
                        f"{name}: kombu and Celery know no sentinels:// (TLS) form; set "
                        "BRIDGE_BROKER_URL and BRIDGE_RESULT_BACKEND to sentinel:// URLs"
                    )
                try:
                    parse_sentinel(url, self.sentinel_master)
                except ConfigError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``BridgeSettings()`` reads the environment; :meth:`load` reads it itself, once
        (to merge per-route variables into the file's routes), and passes every value."""
        if _VALUES_GIVEN.get():
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # ``celery inspect conf`` and Flower show the settings: never a URL's password.
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if isinstance(value, str) and "://" in value else value

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        return self.result_backend or self.redis_url

    def route(self, name: str) -> RouteConfig:
        try:
            return self.routes[name]
        except KeyError:
            known = ", ".join(sorted(self.routes)) or "none"
            raise ConfigError(f"unknown route {name!r} (configured: {known})") from None

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> BridgeSettings:
        """Settings from the routes file (``path``, else ``BRIDGE_CONFIG``), then the
        environment, then ``overrides``.

        Routes are the file's (with no file, the built-in ones), changed field by field
        by ``BRIDGE_ROUTES__<NAME>__<FIELD>`` variables (a name the file lacks adds a
        route); a whole ``BRIDGE_ROUTES`` (JSON) or ``routes=`` replaces them. Every
        problem is reported at once, with its field and, for a variable, its name.
        """
        env = _environment(cls)
        env_routes: dict[str, Any] = env.pop("routes", None) or {}
        given_routes = overrides.pop("routes", None)
        found = overrides.get("config") or env.get("config")
        path = Path(path) if path is not None else Path(found) if found else None
        file_values: dict[str, Any] = read_toml(path, "bridge") if path is not None else {}
        file_routes = file_values.pop("routes", None)
        problems = Problems("bridge", path)
        for key in sorted(set(file_values) - set(cls.model_fields)):
            problems.add("file", f"{key}: unknown setting")
            del file_values[key]
        settings: BridgeSettings | None = None
        token = _VALUES_GIVEN.set(True)  # read above: not again, routes and all
        try:
            settings = cls(**{**file_values, **env, **overrides, "config": path})
        except ValidationError as exc:
            for loc, text in errors_of(exc):
                field = str(loc[0]) if loc else ""
                if field in overrides:
                    problems.add("given", text)
                elif field in env:
                    problems.add("env", text, f"BRIDGE_{field.upper()}")
                else:
                    problems.add("file" if path else "given", text)
        finally:
            _VALUES_GIVEN.reset(token)
        sources = _RouteSources(env_routes)
        if given_routes is not None:
            raw_routes = sources.start(dict(given_routes), "given")
        elif sources.whole:
            raw_routes = sources.start(env_routes, "env")
        elif file_routes is None:
            url = (
                settings.emulator_url if settings else str(cls.model_fields["emulator_url"].default)
            )
            builtin = {n: r.model_dump(exclude_unset=True) for n, r in default_routes(url).items()}
            raw_routes = sources.merge(sources.start(builtin, "builtin"))
        elif not isinstance(file_routes, dict):
            problems.add("file", "routes: must be a table of [routes.NAME] tables")
            raw_routes = {}
        else:
            if not file_routes:
                problems.add("file", "routes: the file defines no routes: add [routes.NAME]")
            raw_routes = sources.merge(sources.start(file_routes, "file"))
        routes: dict[str, RouteConfig] = {}
        for name, raw in raw_routes.items():
            try:
                routes[name] = RouteConfig.model_validate(raw)
            except ValidationError as exc:
                for loc, text in errors_of(exc, prefix=f"routes.{name}"):
                    source, variable = sources.blame(name, str(loc[0]) if loc else "", path)
                    problems.add(source, text, variable)
        problems.raise_any()
        assert settings is not None  # raise_any raised otherwise
        settings.routes = routes
        return settings


_WHOLE_ROUTES = "BRIDGE_ROUTES"


class _RouteSources:
    """Where each route, and each field of it, came from: to merge the environment's
    per-field variables into the file's routes, and to name the culprit of an error."""

    def __init__(self, env_routes: dict[str, Any]) -> None:
        self.env_routes = env_routes
        self.whole = any(v.upper() == _WHOLE_ROUTES for v in os.environ)
        self.variables: dict[tuple[str, str], str] = {}  # (route, field) -> variable
        for variable in os.environ:
            parts = variable.split("__")
            if len(parts) >= 3 and parts[0].upper() == _WHOLE_ROUTES:
                self.variables[(parts[1].lower(), parts[2].lower())] = variable
        self.origin: dict[str, str] = {}

    def start(self, routes: dict[str, Any], origin: str) -> dict[str, Any]:
        """``routes`` as they are, each from ``origin`` (``file``, ``builtin``, ``env``,
        ``given``)."""
        self.origin = dict.fromkeys(routes, origin)
        return dict(routes)

    def merge(self, routes: dict[str, Any]) -> dict[str, Any]:
        """``routes`` with the per-field variables applied (a route name matches
        whatever its case: variables are read case-insensitively)."""
        merged = dict(routes)
        for name, fields in self.env_routes.items():
            same = [n for n in merged if n.lower() == name.lower()]
            target = name if name in merged else same[0] if len(same) == 1 else name
            base = merged.get(target)
            if isinstance(base, dict) and isinstance(fields, dict):
                merged[target] = {**base, **fields}
            else:
                merged[target] = fields
                self.origin[target] = "env"
        return merged

    def blame(self, route: str, field: str, path: Path | None) -> tuple[str, str | None]:
        """The source of an error in ``route``'s ``field``, and the variable to name."""
        origin = self.origin.get(route, "env")
        variable = self.variables.get((route.lower(), field))
        if origin == "given":
            return "given", None
        if variable is not None:
            return "env", variable
        if origin == "env":
            if self.whole:
                return "env", _WHOLE_ROUTES
            where = path or "the built-in routes"
            return "env", f"{_WHOLE_ROUTES}__{route.upper()}__*: {where} has no route {route!r}"
        return ("file" if origin == "file" else "env"), None


def _environment(cls: type[BaseSettings]) -> dict[str, Any]:
    """The ``BRIDGE_*`` variables' values: tables decoded, nothing validated yet."""
    try:
        return dict(EnvSettingsSource(cls)())
    except SettingsError as exc:  # e.g. BRIDGE_ROUTES is not JSON
        raise ConfigError(f"invalid bridge settings in the environment: {exc}") from None


def default_routes(emulator_url: str) -> dict[str, RouteConfig]:
    """The routes used with no file: the emulator's ``echo``, ``stream`` and ``fail``."""
    base = emulator_url.rstrip("/") + "/v2"
    modes: dict[str, Mode] = {"echo": "poll", "stream": "stream", "fail": "poll"}
    return {
        name: RouteConfig(endpoint_id=name, base_url=base, mode=mode, default_emulator_key=True)
        for name, mode in modes.items()
    }
