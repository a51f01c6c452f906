"""Emulator configuration: one pydantic-settings root (env prefix ``BRIDGE_EMULATOR_``).

Values come, lowest first, from the defaults here, a TOML file (``--config`` or
``BRIDGE_EMULATOR_CONFIG``; see ``config/emulator.toml``), then the environment.
Endpoint and template fields use RunPod's own camelCase names.
"""

from __future__ import annotations

import ipaddress
import re
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bridge.configfiles import describe_errors, read_toml
from bridge.errors import ConfigError

DEV_API_KEY = "rp-emulator-dev-key"
"""The key that works with no configuration while the emulator listens on loopback only."""

BUILTIN_HANDLERS = {
    "echo": "bridge.emulator.handlers:echo",
    "stream": "bridge.emulator.handlers:stream",
    "fail": "bridge.emulator.handlers:fail",
}
EXTERNAL = "external"
"""A template whose ``imageName`` is ``external`` has no simulated workers: its jobs wait
for external worker processes speaking the worker protocol."""

DEFAULT_RATE_LIMITS: dict[str, int] = {
    "run": 1000,
    "runsync": 2000,
    "status": 2000,
    "status-sync": 2000,
    "stream": 2000,
    "cancel": 100,
    "purge-queue": 2,
}
"""RunPod's documented per-endpoint limits, requests per ``rate_window_s`` (10 s)."""


QUEUE_OPERATIONS = (
    "run", "runsync", "status", "status-sync", "stream", "cancel", "retry", "purge-queue",
    "health",
)  # fmt: skip
"""The queue API's operations, as ``/_emulator/stats`` counts them and ``fail_ops`` names them."""

MAX_LATENCY_MS = 60_000
"""The longest injected latency: a fault must not hold a connection (and a slot) for ever."""


class FaultConfig(BaseModel):
    """Faults injected into one endpoint's queue API (client side), for reliability tests.

    Every request draws its fate once, on arrival, from the endpoint's own random source,
    so a given ``seed`` (or the server's ``fault_seed``) gives the same faults to the same
    sequence of requests. ``fail_ops`` is not random: every request of a named operation
    gets that HTTP status.
    """

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(0.0, ge=0, le=1, description="probability of a 500 reply")
    latency_ms: int = Field(
        0, ge=0, le=MAX_LATENCY_MS, description="delay added before every reply"
    )
    drop_rate: float = Field(0.0, ge=0, le=1, description="connection dropped, unprocessed")
    drop_after_rate: float = Field(
        0.0, ge=0, le=1, description="request processed, then the connection dropped"
    )
    rate_limit_rate: float = Field(0.0, ge=0, le=1, description="probability of a forced 429")
    seed: int | None = Field(
        None, description="seed of this endpoint's fault sequence (default: fault_seed)"
    )
    fail_ops: dict[str, int] = Field(
        default_factory=dict,
        description='operation -> HTTP status every such request gets, e.g. {"status": 401}',
    )

    @field_validator("fail_ops")
    @classmethod
    def _known_operations(cls, value: dict[str, int]) -> dict[str, int]:
        for operation, status in value.items():
            if operation not in QUEUE_OPERATIONS:
                raise ValueError(
                    f"unknown operation {operation!r}; one of {', '.join(QUEUE_OPERATIONS)}"
                )
            if status not in _ERROR_STATUSES:
                raise ValueError(f"{operation}: {status} is not an HTTP error status (400-599)")
        return value

    @property
    def active(self) -> bool:
        return any(
            (self.error_rate, self.latency_ms, self.drop_rate, self.drop_after_rate,
             self.rate_limit_rate, self.fail_ops)
        )  # fmt: skip


_ERROR_STATUSES = frozenset(s.value for s in HTTPStatus if 400 <= s.value <= 599)


class TemplateConfig(BaseModel):
    """A template: ``imageName`` names the handler its workers run: a built-in (``echo``,
    ``stream``, ``fail``), ``external``, or a name from the server's ``handlers``. In the
    configuration file (only there) it may also be an import path ``pkg.module:function``,
    which that adds to the allowed handlers."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(min_length=1)
    name: str = ""
    imageName: str = Field(min_length=1)
    isServerless: bool = True


class EndpointConfig(BaseModel):
    """One endpoint, with RunPod's field names and defaults."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""
    templateId: str = Field(min_length=1)
    gpuIds: str = "AMPERE_16"
    gpuCount: int = Field(1, ge=1)
    workersMin: int = Field(0, ge=0)
    workersMax: int = Field(3, ge=0)
    idleTimeout: float = Field(5, ge=0)
    scalerType: Literal["QUEUE_DELAY", "REQUEST_COUNT"] = "QUEUE_DELAY"
    scalerValue: float = Field(4, gt=0)
    flashboot: bool = True
    executionTimeoutMs: int = Field(600_000, gt=0)
    returnAggregateStream: bool = False
    coldStartMs: int | None = Field(None, ge=0)
    faults: FaultConfig = Field(default_factory=FaultConfig)


def _builtin_templates() -> list[TemplateConfig]:
    names = [*BUILTIN_HANDLERS, EXTERNAL]
    return [TemplateConfig(id=n, name=n, imageName=n) for n in names]


def _builtin_endpoints() -> list[EndpointConfig]:
    fast = {"workersMax": 100, "scalerType": "REQUEST_COUNT", "scalerValue": 1, "idleTimeout": 30}
    return [
        EndpointConfig(id="echo", name="echo", templateId="echo", **fast),
        EndpointConfig(
            id="stream", name="stream", templateId="stream", returnAggregateStream=True, **fast
        ),
        EndpointConfig(id="fail", name="fail", templateId="fail", **fast),
        EndpointConfig(id=EXTERNAL, name=EXTERNAL, templateId=EXTERNAL, workersMax=0),
    ]


class EmulatorSettings(BaseSettings):
    """Everything the emulator can be told. Times are seconds unless the name says ms."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_EMULATOR_", extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on (else: needs api_keys)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on; 0: any free port")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted keys (env: comma-separated)"
    )
    allow_dev_key: bool = Field(
        True,
        description="accept rp-emulator-dev-key, from loopback callers, while no api_keys are set",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names served besides localhost and IP addresses (DNS-rebinding guard)",
    )
    handlers: dict[str, str] = Field(
        default_factory=dict,
        description="handlers templates may name besides the built-ins: name = 'pkg.mod:func'",
    )

    templates: list[TemplateConfig] = Field(
        default_factory=_builtin_templates, description="[[templates]]: imageName is the handler"
    )
    endpoints: list[EndpointConfig] = Field(
        default_factory=_builtin_endpoints, description="[[endpoints]], with RunPod's fields"
    )

    rate_limits_enabled: bool = Field(
        True, description="answer 429 (with Retry-After) past the rate limits"
    )
    rate_limits: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS),
        description="requests per window, per operation, endpoint and key (RunPod's)",
    )
    rate_window_s: float = Field(10.0, gt=0, description="the rate limits' window")
    fault_seed: int | None = Field(
        None,
        description="seeds each endpoint's injected faults (a faults.seed wins); unset: random",
    )

    run_max_bytes: int = Field(10 * 1024 * 1024, description="largest /run body (413 above)")
    runsync_max_bytes: int = Field(20 * 1024 * 1024, description="largest /runsync body")
    run_retention_s: float = Field(
        1800.0, ge=0, description="how long a /run job's result is kept after it ends"
    )
    runsync_retention_s: float = Field(60.0, ge=0, description="the same for /runsync jobs")
    runsync_default_wait_ms: int = Field(
        90_000, ge=0, description="how long /runsync holds when no ?wait= is given"
    )
    status_sync_default_wait_ms: int = Field(90_000, ge=0, description="the same for /status-sync")
    max_wait_ms: int = Field(300_000, ge=0, description="the longest ?wait= honoured")

    cold_start_ms: int = Field(1000, ge=0, description="a new simulated worker's start time")
    flashboot_cold_start_ms: int = Field(0, ge=0, description="the same with FlashBoot on")
    scale_tick_s: float = Field(0.25, gt=0, description="how often the autoscaler decides")

    job_take_hold_s: float = Field(30.0, ge=0, description="long-poll of job-take/job-stop")
    worker_dead_after_s: float = Field(60.0, gt=0, description="silence before a worker is dead")
    stop_redeliver_s: float = Field(
        0.25, gt=0, description="pause before job-stop repeats a stop the worker has not obeyed"
    )

    webhook_attempts: int = Field(
        3, ge=1, description="deliveries of a webhook, the first included"
    )
    webhook_retry_interval_s: float = Field(
        10.0, ge=0, description="pause between webhook deliveries"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="timeout of one webhook delivery")

    @field_validator("api_keys", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: comma-separated
            return [part.strip() for part in value.split(",")] if value.strip() else []
        return value

    @field_validator("api_keys")
    @classmethod
    def _real_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for index, key in enumerate(keys):
            secret = key.get_secret_value()
            if not secret.strip():
                raise ValueError(f"key {index + 1} is empty: an empty key would let anyone in")
            if secret == DEV_API_KEY:
                raise ValueError("rp-emulator-dev-key is public: it cannot be a configured key")
        return keys

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        if any(not h.strip() for h in hosts):
            raise ValueError("a host name must not be empty")
        return [h.strip().lower().rstrip(".") for h in hosts]

    @field_validator("handlers")
    @classmethod
    def _handler_paths(cls, handlers: dict[str, str]) -> dict[str, str]:
        for name, path in handlers.items():
            if not name.strip() or name in BUILTIN_HANDLERS or name == EXTERNAL:
                raise ValueError(f"{name!r} cannot name a handler (empty or built-in)")
            if not is_import_path(path):
                raise ValueError(f"{name}: {path!r} is not of the form 'package.module:function'")
        return handlers

    @model_validator(mode="after")
    def _templates_name_handlers(self) -> EmulatorSettings:
        allowed = self.handler_paths()
        for template in self.templates:
            if template.imageName != EXTERNAL and template.imageName not in allowed:
                raise ValueError(
                    f"template {template.id!r}: imageName {template.imageName!r} is not a "
                    f"handler: use one of {', '.join(allowed)}, 'external', or an import path "
                    "'package.module:function'"
                )
        return self

    def handler_paths(self) -> dict[str, str]:
        """The handlers templates may name (fixed at startup; the admin API can only pick
        among them): the built-ins, ``handlers``, and import paths that configured
        templates name directly."""
        paths = {**BUILTIN_HANDLERS, **self.handlers}
        for template in self.templates:
            if template.imageName not in paths and is_import_path(template.imageName):
                paths[template.imageName] = template.imageName
        return paths

    def accepted_keys(self) -> list[str]:
        """Keys the server accepts: the configured ones, else the development key
        (only while bound to loopback; see :meth:`check_bind`)."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if not keys and self.allow_dev_key:
            keys = [DEV_API_KEY]
        return keys

    def check_bind(self) -> None:
        """Refuse to serve a non-loopback address with only the public development key."""
        if self.api_keys or _is_loopback(self.host):
            return
        raise ConfigError(
            f"refusing to listen on {self.host!r} with only the public development key: "
            "set BRIDGE_EMULATOR_API_KEYS (comma-separated) or api_keys in the config file"
        )

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> EmulatorSettings:
        """Build settings from defaults, an optional TOML file, the environment, then
        ``overrides``; errors name the file and the field."""
        file_values: dict[str, Any] = {}
        if path is not None:
            file_values = _read_toml(Path(path))
        try:
            from_env = cls()
            env_values = {k: getattr(from_env, k) for k in from_env.model_fields_set}
            return cls(**{**file_values, **env_values, **overrides})
        except ValidationError as exc:
            where = f"in {path}" if path else "in the environment"
            raise ConfigError(
                f"invalid emulator settings {where}:\n{describe_errors(exc)}"
            ) from None


def _read_toml(path: Path) -> dict[str, Any]:
    data = read_toml(path, "emulator")
    server = data.pop("server", {})
    if not isinstance(server, dict):
        raise ConfigError(f"{path}: [server] must be a table")
    return {**server, **data}


def is_import_path(value: str) -> bool:
    """True for ``package.module:function`` (dotted identifiers around one colon)."""
    return _IMPORT_PATH.fullmatch(value) is not None


_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
