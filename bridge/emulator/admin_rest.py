"""RunPod's REST v2 admin API for serverless endpoints, at ``/v2/serverless``, in the shapes
of RunPod's openapi (``api-reference-v2/openapi.json``).

``GET /v2/serverless`` → ``{"endpoints": [...]}``; ``POST`` creates (201);
``GET|PATCH|DELETE /v2/serverless/{id}`` (DELETE → 204, and the endpoint's bound template
goes with it). Errors are RFC 9457 ``application/problem+json`` ``{"title", "status",
"detail"}``: 400 for a body that is not a JSON object or breaks a cross-field rule
(exactly one of ``gpu`` / ``cpu``; ``workers.idleTimeout`` with ``REQUEST_COUNT``
scaling; ``allowedCudaVersions`` with ``minCudaVersion``), 404 for an unknown endpoint,
415 for a body that is not ``application/json``, 422 for invalid fields, 401 (see
``security``) and 429 past the per-user quotas, with ``Retry-After``. Every
authenticated answer carries ``RateLimit`` and ``RateLimit-Policy``.

An endpoint has no ``templateId`` of its own: a ``templateId`` and/or ``image`` (and
``args``, ``disk``, ``env``, ``ports``, ``registry``) are resolved into a template bound
to the endpoint (body fields win over the named template's; ``env`` merges per key). The
image must name a handler this emulator may run (``echo``, ``stream``, ``fail``,
``external`` or one of the server's ``handlers``; 422 otherwise). ``requestUrls`` point at
this server's queue API; the job ones end in a literal ``/{job_id}``.
These routes must be registered before the queue API's ``/v2/{endpoint_id}/…``.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.emulator import admin
from bridge.emulator.engine import Engine, UnknownEndpoint
from bridge.emulator.http import ENGINE, SETTINGS, ApiError, ok, problem, read_json
from bridge.emulator.limits import Quota
from bridge.emulator.state import EndpointState

_MAX_BODY = 1024 * 1024
_DEFAULT_TIMEOUT_MS = 300_000  # REST v2's documented default (GraphQL's is 600 s)
_DEFAULT_IDLE_TIMEOUT = 10  # REST v2's CreateEndpointRequest default (GraphQL's is 5)
_GB_PER_VCPU = {"c": 2, "g": 4, "m": 8}  # CPU flavor suffix → RAM per vCPU [INFER]
QUOTA: web.AppKey[Quota] = web.AppKey("admin_quota", Quota)


class _Body(BaseModel):
    # Unknown fields are refused so that a typo is a 422, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class Workers(_Body):
    """``workers``: bounds and idle timeout (seconds)."""

    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)
    idleTimeout: int | None = Field(None, ge=1, le=3600)


class Scaling(_Body):
    """``scaling``: the scaler type and its one value."""

    type: Literal["QUEUE_DELAY", "REQUEST_COUNT"]
    queueDelay: float | None = Field(None, ge=0.5)
    requestCount: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _matches_type(self) -> Scaling:
        other = self.requestCount if self.type == "QUEUE_DELAY" else self.queueDelay
        if other is not None:
            wanted = "queueDelay" if self.type == "QUEUE_DELAY" else "requestCount"
            raise ValueError(f"scaling type {self.type} takes {wanted}")
        return self

    @property
    def value(self) -> float | None:
        return self.queueDelay if self.type == "QUEUE_DELAY" else self.requestCount


class Gpu(_Body):
    """``gpu``: pools (RunPod's pool ids), count and CUDA constraints (stored only)."""

    pools: list[str] | None = Field(None, min_length=1)
    count: int | None = Field(None, ge=1)
    excludedTypes: list[str] | None = None
    allowedCudaVersions: list[str] | None = None
    minCudaVersion: str | None = Field(None, pattern=r"^$|^\d+\.\d+$")


class Cpu(_Body):
    """One ``cpu`` entry: a CPU flavor and its vCPU count (a power of two, at least 2)."""

    id: str = Field(min_length=1)
    vcpuCount: int = Field(ge=2)

    @model_validator(mode="after")
    def _power_of_two(self) -> Cpu:
        if self.vcpuCount & (self.vcpuCount - 1):
            raise ValueError(f"vcpuCount must be a power of two, got {self.vcpuCount}")
        return self


class EndpointBody(_Body):
    """``CreateEndpointRequest`` / ``UpdateEndpointRequest``: every field optional here;
    :func:`create` checks what creation requires."""

    name: str | None = Field(None, min_length=1)
    type: Literal["QUEUE", "LOAD_BALANCER"] | None = None
    templateId: str | None = Field(None, min_length=1)
    image: str | None = Field(None, min_length=1)
    args: str | None = None
    disk: int | None = Field(None, ge=1)
    env: dict[str, str] | None = None
    ports: list[str] | None = None
    registry: str | None = None
    gpu: Gpu | None = None
    cpu: list[Cpu] | None = Field(None, min_length=1)
    workers: Workers | None = None
    scaling: Scaling | None = None
    flashboot: Literal["OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT"] | None = None
    timeout: int | None = Field(None, gt=0)
    dataCenterIds: list[str] | None = None
    networkVolumes: list[str] | None = None


class CrossFieldError(ApiError):
    """A body that matches the schema but breaks a rule between fields: 400."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


# -- the endpoint's bound template ---------------------------------------------------------

_CONTAINER = {
    "args": "dockerArgs",
    "disk": "containerDiskInGb",
    "registry": "containerRegistryAuthId",
}
"""REST container fields → the template fields GraphQL's ``saveTemplate`` names."""


def _bind_template(
    engine: Engine, body: EndpointBody, current: str | None, endpoint_id: str | None
) -> str | None:
    """The id of the endpoint's own template after ``body``'s container fields, or None
    when the body names none. It starts from ``body.templateId`` if given, else from the
    endpoint's ``current`` template; the body's fields win, ``env`` merges per key."""
    named = [body.templateId, body.image, body.args, body.disk, body.env, body.ports]
    if all(v is None for v in named) and body.registry is None:
        return None
    base_id = body.templateId or current
    base = engine.templates.get(base_id or "")
    if body.templateId and base is None:
        raise admin.InvalidInput(f"template {body.templateId!r} not found")
    fields: dict[str, Any] = base.model_dump() if base is not None else {}
    fields.pop("id", None)
    if body.image is not None:
        fields["imageName"] = body.image
    for key, stored in _CONTAINER.items():
        value = getattr(body, key)
        if value is not None:
            fields[stored] = value
    if body.ports is not None:
        fields["ports"] = ",".join(body.ports)
    if body.env is not None:  # merged into a named template's; else it replaces
        inherited = fields.get("env") or {} if body.templateId else {}
        fields["env"] = {**inherited, **body.env}
    fields["name"] = f"{body.name or fields.get('name') or 'endpoint'} (endpoint template)"
    owned = base is not None and admin.stored(base, admin.BOUND_TO) == endpoint_id
    if owned and body.templateId is None and base is not None:
        fields["id"] = base.id  # update the endpoint's own template in place
    if endpoint_id is not None:
        fields[admin.BOUND_TO] = endpoint_id
    return admin.save_template(engine, fields).id


# -- wire shapes ↔ config fields ---------------------------------------------------------


def _config_fields(body: EndpointBody) -> dict[str, Any]:
    """The config fields ``body`` sets (only those: a PATCH changes nothing else)."""
    fields: dict[str, Any] = {"name": body.name, "type": body.type}
    if body.gpu is not None:
        gpu = body.gpu
        fields["gpuIds"] = ",".join(gpu.pools) if gpu.pools else None
        fields["gpuCount"] = gpu.count
        if gpu.pools is not None:
            fields["excludedTypes"] = gpu.excludedTypes or []
        cuda = gpu.allowedCudaVersions
        fields["allowedCudaVersions"] = ",".join(cuda) if cuda is not None else None
        if gpu.minCudaVersion is not None:
            fields["minCudaVersion"] = gpu.minCudaVersion or None
    if body.cpu is not None:
        fields["cpu"] = [c.model_dump() for c in body.cpu]
    if body.workers is not None:
        workers = body.workers
        fields |= {"workersMin": workers.min, "workersMax": workers.max}
        fields["idleTimeout"] = workers.idleTimeout
    if body.scaling is not None:
        fields |= {"scalerType": body.scaling.type, "scalerValue": body.scaling.value}
    if body.flashboot is not None:
        fields |= admin.flashboot_fields(body.flashboot)
    fields["executionTimeoutMs"] = body.timeout
    if body.dataCenterIds is not None:
        fields["locations"] = ",".join(body.dataCenterIds) or None
    if body.networkVolumes is not None:
        fields["networkVolumeIds"] = body.networkVolumes
        fields["networkVolumeId"] = body.networkVolumes[0] if body.networkVolumes else None
    return {k: v for k, v in fields.items() if v is not None}


def _is_cpu(fields: dict[str, Any]) -> bool:
    return fields.get("computeType") == "CPU"


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


def _split(value: Any) -> list[str]:
    return [part for part in (value or "").split(",") if part]


def _cpu_view(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**c, "memory": c["vcpuCount"] * _GB_PER_VCPU.get(str(c["id"])[-1:], 4)} for c in entries
    ]


def endpoint_view(request: web.Request, engine: Engine, state: EndpointState) -> dict[str, Any]:
    """The REST v2 ``Endpoint`` object for ``state`` (no ``templateId``: REST v2 has none)."""
    config = state.config
    extra = config.model_extra or {}
    template = engine.templates.get(config.templateId)
    base = f"{request.scheme}://{request.host}/v2/{config.id}"
    operations = {
        "run": "run", "runSync": "runsync", "status": "status/{job_id}",
        "stream": "stream/{job_id}", "cancel": "cancel/{job_id}", "retry": "retry/{job_id}",
        "purgeQueue": "purge-queue", "health": "health",
    }  # fmt: skip
    scaling_key = "queueDelay" if config.scalerType == "QUEUE_DELAY" else "requestCount"
    workers: dict[str, Any] = {"min": config.workersMin, "max": config.workersMax}
    if config.scalerType != "REQUEST_COUNT":  # not applicable there: omitted
        workers["idleTimeout"] = _number(config.idleTimeout)
    view: dict[str, Any] = {
        "id": config.id,
        "name": config.name,
        "type": admin.stored(config, "type", admin.QUEUE),
        "requestUrls": {key: f"{base}/{op}" for key, op in operations.items()},
        "image": template.imageName if template else None,
        "args": admin.stored(template, "dockerArgs", "") if template else "",
        "disk": admin.stored(template, "containerDiskInGb") if template else None,
        "ports": _split(admin.stored(template, "ports")) if template else [],
        "env": admin.endpoint_env(engine, config),
        "registry": admin.stored(template, "containerRegistryAuthId") if template else None,
    }
    if _is_cpu(extra):
        view["gpu"] = None
        view["cpu"] = _cpu_view(extra.get("cpu") or [])
    else:
        gpu: dict[str, Any] = {"pools": _split(config.gpuIds), "count": config.gpuCount}
        if extra.get("excludedTypes"):
            gpu["excludedTypes"] = extra["excludedTypes"]
        gpu["allowedCudaVersions"] = _split(extra.get("allowedCudaVersions"))
        gpu["minCudaVersion"] = extra.get("minCudaVersion")
        view["gpu"] = gpu
    view |= {
        "workers": workers,
        "scaling": {"type": config.scalerType, scaling_key: _number(config.scalerValue)},
        "dataCenterIds": _split(extra.get("locations")),
        "networkVolumes": extra.get("networkVolumeIds", []),
        "timeout": config.executionTimeoutMs,
        "flashboot": admin.flashboot_type(config),
        "createdAt": admin.iso_time(state.created_at),
    }
    return view


# -- routes --------------------------------------------------------------------------------


async def _read_body(request: web.Request) -> EndpointBody:
    raw = await read_json(request, max_bytes=_MAX_BODY)
    if not isinstance(raw, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return EndpointBody.model_validate(raw)
    except ValidationError as exc:
        raise admin.InvalidInput(admin.describe(exc)) from None


@web.middleware
async def problems(request: web.Request, handler: Any) -> web.StreamResponse:
    """Quotas and ``RateLimit`` headers, and this module's errors as problem documents
    (other routes keep theirs)."""
    route = request.match_info.route.name or ""
    if not route.startswith("rest:"):
        response: web.StreamResponse = await handler(request)
        return response
    retry_after, headers = request.app[QUOTA].take()
    if retry_after is not None:
        detail = "rate limit exceeded: too many admin requests for this account"
        return problem(429, detail, {**headers, "Retry-After": str(retry_after)})
    try:
        response = await handler(request)
    except ApiError as exc:
        response = problem(exc.status, exc.message)
    except UnknownEndpoint as exc:
        response = problem(404, str(exc))
    except admin.InvalidInput as exc:
        response = problem(422, str(exc))
    response.headers.update(headers)
    return response


async def list_endpoints(request: web.Request) -> web.Response:
    """``GET /v2/serverless``."""
    engine = request.app[ENGINE]
    views = [endpoint_view(request, engine, s) for s in engine.endpoints.values()]
    return ok({"endpoints": views})


def _check_compute(body: EndpointBody, *, cpu_endpoint: bool | None) -> None:
    """``gpu`` and ``cpu`` exclude each other; on update neither may change the family."""
    if body.gpu is not None and body.cpu is not None:
        raise CrossFieldError("give gpu or cpu, not both")
    if cpu_endpoint is None and body.gpu is None and body.cpu is None:
        raise CrossFieldError("exactly one of gpu or cpu is required")
    if cpu_endpoint is True and body.gpu is not None:
        raise CrossFieldError("this is a CPU endpoint: gpu cannot be set (compute is fixed)")
    if cpu_endpoint is False and body.cpu is not None:
        raise CrossFieldError("this is a GPU endpoint: cpu cannot be set (compute is fixed)")


def _check_rules(body: EndpointBody, scaler_type: str) -> None:
    """The rules between fields the schema cannot say."""
    if scaler_type == "REQUEST_COUNT" and body.workers and body.workers.idleTimeout is not None:
        raise CrossFieldError("workers.idleTimeout does not apply to REQUEST_COUNT scaling")
    if body.gpu is not None and body.gpu.allowedCudaVersions and body.gpu.minCudaVersion:
        raise CrossFieldError("gpu.allowedCudaVersions and gpu.minCudaVersion exclude each other")


async def create(request: web.Request) -> web.Response:
    """``POST /v2/serverless``: requires ``name``, ``type``, ``scaling``, a template or an
    image, and exactly one of ``gpu`` / ``cpu``."""
    engine = request.app[ENGINE]
    body = await _read_body(request)
    missing = [name for name in ("name", "type", "scaling") if getattr(body, name) is None]
    if missing:
        raise admin.InvalidInput(f"required field(s) missing: {', '.join(missing)}")
    if not body.templateId and not body.image:
        raise admin.InvalidInput("either templateId or image is required")
    assert body.scaling is not None
    _check_compute(body, cpu_endpoint=None)
    _check_rules(body, body.scaling.type)
    fields = _config_fields(body)
    if body.cpu is not None:
        fields |= {"computeType": "CPU", "gpuIds": ""}
    fields.setdefault("flashboot", False)  # REST v2's default is OFF
    fields.setdefault("flashBootType", "OFF")
    fields.setdefault("executionTimeoutMs", _DEFAULT_TIMEOUT_MS)
    fields.setdefault("idleTimeout", _DEFAULT_IDLE_TIMEOUT)
    endpoint_id = admin.new_id(engine.endpoints)
    admin.check_create(engine, fields)
    fields["templateId"] = _bind_template(engine, body, None, endpoint_id)
    state = admin.create_endpoint(engine, fields, endpoint_id=endpoint_id)
    return ok(endpoint_view(request, engine, state), status=201)


async def get_one(request: web.Request) -> web.Response:
    """``GET /v2/serverless/{id}``."""
    engine = request.app[ENGINE]
    state = engine.endpoint(request.match_info["endpoint_id"])
    return ok(endpoint_view(request, engine, state))


async def patch(request: web.Request) -> web.Response:
    """``PATCH /v2/serverless/{id}``: any subset of the create fields; a ``templateId``
    applies that template's container settings once (no link is kept)."""
    engine = request.app[ENGINE]
    endpoint_id = request.match_info["endpoint_id"]
    state = engine.endpoint(endpoint_id)  # 404 before a template is created for nothing
    body = await _read_body(request)
    _check_compute(body, cpu_endpoint=_is_cpu(state.config.model_extra or {}))
    _check_rules(body, body.scaling.type if body.scaling else state.config.scalerType)
    fields = _config_fields(body)
    # Validate everything else first: a rejected change must leave the endpoint as it was.
    admin.check_update(engine, endpoint_id, fields)
    current = state.config.templateId
    template_id = _bind_template(engine, body, current, endpoint_id)
    if template_id is not None and template_id != current:
        fields["templateId"] = template_id
    state = admin.update_endpoint(engine, endpoint_id, fields)
    return ok(endpoint_view(request, engine, state))


async def delete(request: web.Request) -> web.Response:
    """``DELETE /v2/serverless/{id}``: its unfinished jobs end ``CANCELLED``; its bound
    template is deleted with it."""
    admin.delete_endpoint(
        request.app[ENGINE], request.match_info["endpoint_id"], require_scaled_down=False
    )
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    """Register ``/v2/serverless`` routes (call before the queue API's ``setup``)."""
    settings = app[SETTINGS]
    app[QUOTA] = Quota(settings.admin_rate_limits, app[ENGINE].now)
    app.middlewares.append(problems)
    app.router.add_get("/v2/serverless", list_endpoints, name="rest:list")
    app.router.add_post("/v2/serverless", create, name="rest:create")
    item = "/v2/serverless/{endpoint_id}"
    app.router.add_get(item, get_one, name="rest:get")
    app.router.add_patch(item, patch, name="rest:patch")
    app.router.add_delete(item, delete, name="rest:delete")
