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
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from bridge.configfiles import describe_errors, read_toml
from bridge.errors import ConfigError

DEV_API_KEY = "rp-emulator-dev-key"
"""The key that works with no configuration while the emulator listens on loopback only."""

ACCOUNT = "user_emulator"
"""The one account every key of the emulator belongs to: rate limits and concurrency caps
are per user per endpoint on RunPod, so all keys share them (``myself.id``, ``userId``)."""

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

DEFAULT_CONCURRENCY_LIMITS: dict[str, int] = {
    "run": 200,
    "runsync": 400,
    "status": 400,
    "status-sync": 400,
    "stream": 400,
    "cancel": 20,
}
"""RunPod's documented concurrent-request caps, per user per endpoint (send-requests
"Rate limits and quotas"); ``status-sync`` shared its row with ``status`` in that table."""

DEFAULT_ADMIN_RATE_LIMITS: dict[str, int] = {"minute": 60, "hour": 3000, "day": 50000}
"""REST v2's per-user quotas, the values of its openapi ``RateLimit-Policy`` example."""

MAX_POLICY_MS = 7 * 24 * 3600 * 1000
"""The longest ``policy.ttl`` / ``policy.executionTimeout`` RunPod accepts: 7 days."""

DAY_MS = 24 * 3600 * 1000


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


def _builtin_endpoints(profile: str = "fast") -> list[EndpointConfig]:
    # fast: a worker per job at once; runpod: RunPod's defaults for a new endpoint
    # (workersMax 3, QUEUE_DELAY 4 s, idle 5 s, FlashBoot on; ENDPOINT_API.md §4).
    scaling: dict[str, Any] = (
        {"workersMax": 100, "scalerType": "REQUEST_COUNT", "scalerValue": 1, "idleTimeout": 30}
        if profile == "fast"
        else {}
    )
    return [
        EndpointConfig(id="echo", name="echo", templateId="echo", **scaling),
        EndpointConfig(
            id="stream", name="stream", templateId="stream", returnAggregateStream=True, **scaling
        ),
        EndpointConfig(id="fail", name="fail", templateId="fail", **scaling),
        EndpointConfig(id=EXTERNAL, name=EXTERNAL, templateId=EXTERNAL, workersMax=0),
    ]


Profile = Literal["fast", "runpod"]

PROFILES: dict[str, dict[str, Any]] = {
    "fast": {},
    "runpod": {
        "endpoints": lambda: _builtin_endpoints("runpod"),
        "account_max_workers": 5,
        "cold_start_ms": 10_000,
        "flashboot_cold_start_ms": 2_000,
        "min_ttl_ms": 10_000,
        "min_execution_timeout_ms": 5_000,
        "concurrency_limits_enabled": True,
        "run_max_bytes": 10_000_000,
        "runsync_max_bytes": 20_000_000,
        "result_max_bytes": 20_000_000,
        "stream_chunk_max_bytes": 1_000_000,
        "admin_rate_limits": lambda: dict(DEFAULT_ADMIN_RATE_LIMITS),
    },
}
"""What each profile changes from the field defaults (which are the ``fast`` profile's).
A value given explicitly (file, environment, argument) always wins over its profile.
``runpod`` is for a developer's last run before deploying: RunPod's account worker cap,
cold starts of seconds, its policy lower bounds, its concurrency caps, and payload limits
read in decimal megabytes (the stricter reading of "10 MB"). ``fast`` keeps what would
slow a test suite lenient: no caps, 1 s cold starts, any positive policy value."""


class EmulatorSettings(BaseSettings):
    """Everything the emulator can be told. Times are seconds unless the name says ms."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_EMULATOR_", extra="forbid")

    profile: Profile = Field(
        "fast",
        description="defaults to start from: fast (tests) or runpod (RunPod's limits and "
        "timings; see docs/emulator.md); explicit settings win",
    )
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
    concurrency_limits_enabled: bool = Field(
        False,
        description="answer 429 past RunPod's concurrent-request caps (runpod profile: on)",
    )
    concurrency_limits: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_CONCURRENCY_LIMITS),
        description="requests in flight at once, per operation and endpoint (RunPod's)",
    )
    admin_rate_limits: dict[str, int] = Field(
        default_factory=lambda: {k: v * 100 for k, v in DEFAULT_ADMIN_RATE_LIMITS.items()},
        description="REST admin requests per minute / hour / day (runpod profile: 60 / "
        "3000 / 50000, RunPod's)",
    )
    fault_seed: int | None = Field(
        None,
        description="seeds each endpoint's injected faults (a faults.seed wins); unset: random",
    )

    run_max_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="largest /run body (413 above; runpod: 10 MB)"
    )
    runsync_max_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="largest /runsync body (runpod: 20 MB)"
    )
    result_max_bytes: int = Field(
        20 * 1024 * 1024,
        gt=0,
        description="largest result a worker may report; above it the job ends COMPLETED "
        "without output (runpod: 20 MB)",
    )
    stream_chunk_max_bytes: int = Field(
        1024 * 1024,
        ge=64,
        description="largest stream chunk; a bigger one is split (runpod: 1 MB)",
    )
    default_ttl_ms: int = Field(
        DAY_MS, gt=0, le=MAX_POLICY_MS, description="a job's lifetime when policy.ttl is unset"
    )
    min_ttl_ms: int = Field(1, gt=0, description="smallest policy.ttl accepted (runpod: 10 s)")
    min_execution_timeout_ms: int = Field(
        1, gt=0, description="smallest policy.executionTimeout accepted (runpod: 5 s)"
    )
    run_retention_s: float = Field(
        1800.0, ge=0, description="how long a /run job's result is kept after it ends"
    )
    runsync_retention_s: float = Field(60.0, ge=0, description="the same for /runsync jobs")
    runsync_default_wait_ms: int = Field(
        90_000, ge=0, description="how long /runsync holds when no ?wait= is given"
    )
    status_sync_default_wait_ms: int = Field(90_000, ge=0, description="the same for /status-sync")
    stream_default_wait_ms: int = Field(
        5_000,
        ge=0,
        description="how long /stream holds for new chunks when no ?wait= is given (below "
        "runpod-python's 10 s read timeout)",
    )
    max_wait_ms: int = Field(300_000, ge=0, description="the longest ?wait= honoured")

    cold_start_ms: int = Field(
        1000, ge=0, description="a new simulated worker's start time (runpod: 10 s)"
    )
    flashboot_cold_start_ms: int = Field(
        0, ge=0, description="the same with FlashBoot on (runpod: 2 s)"
    )
    scale_tick_s: float = Field(0.25, gt=0, description="how often the autoscaler decides")
    account_max_workers: int | None = Field(
        None,
        ge=0,
        description="simulated workers of all endpoints together; more wanted ones are "
        "throttled (runpod: 5, a new account's cap)",
    )
    crash_loop_limit: int = Field(
        3,
        ge=1,
        description="failed starts (handler cannot load) after which a worker is unhealthy",
    )
    requeue_on_worker_loss: bool = Field(
        True,
        description="a job whose worker stopped answering goes back IN_QUEUE (retries + 1); "
        "off: it ends FAILED",
    )

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

    tls_cert_file: Path | None = Field(
        None, description="PEM certificate: serve https (with tls_key_file)"
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        """Fill what the chosen profile changes, for every field not given explicitly."""
        if not isinstance(data, dict):
            return data
        profile = data.get("profile", "fast")
        for name, value in PROFILES.get(str(profile), {}).items():
            if name not in data:
                data[name] = value() if callable(value) else value
        return data

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
    def _tls_pair(self) -> EmulatorSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path}: no such file")
        return self

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

    @property
    def scheme(self) -> str:
        """``https`` when a certificate is configured, else ``http``."""
        return "https" if self.tls_cert_file is not None else "http"

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
            # Only what the environment really sets (not what its profile would fill in),
            # so that a file's value is not overridden by an environment profile default.
            env_values = EnvSettingsSource(cls)()
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
