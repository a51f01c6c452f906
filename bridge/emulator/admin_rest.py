"""RunPod's REST v2 admin API for serverless endpoints, at ``/v2/serverless``.

``GET /v2/serverless`` → ``{"endpoints": [...]}``; ``POST`` creates (201);
``GET|PATCH|DELETE /v2/serverless/{id}`` (DELETE → 204). Errors are RFC 9457
``application/problem+json`` ``{"title", "status", "detail"}``: 400 for a body that is not
a JSON object, 404 for an unknown endpoint, 415 for a body that is not
``application/json``, 422 for invalid fields.

A body may name an ``image`` instead of a ``templateId``: the emulator then creates a
template whose ``imageName`` is that image, which must name an allowed handler (``echo``,
``stream``, ``fail``, ``external`` or one of the server's configured ``handlers``; 422
otherwise). ``requestUrls`` point at this server's queue API; the job-specific ones
(``status``, ``stream``, ``cancel``, ``retry``) take ``/{jobId}`` appended.
These routes must be registered before the queue API's ``/v2/{endpoint_id}/…``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.emulator import admin
from bridge.emulator.engine import Engine, UnknownEndpoint
from bridge.emulator.http import ENGINE, ApiError, ok, read_json
from bridge.emulator.state import EndpointState

_MAX_BODY = 1024 * 1024
_DEFAULT_TIMEOUT_MS = 300_000  # REST v2's documented default (GraphQL's is 600 s)


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
    minCudaVersion: str | None = None


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
    cpu: dict[str, Any] | None = None
    workers: Workers | None = None
    scaling: Scaling | None = None
    flashboot: Literal["OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT"] | None = None
    timeout: int | None = Field(None, gt=0)
    dataCenterIds: list[str] | None = None
    networkVolumes: list[str] | None = None


def problem(status: int, detail: str) -> web.Response:
    """An RFC 9457 problem document."""
    body = {"title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    return web.json_response(body, status=status, content_type="application/problem+json")


# -- wire shapes ↔ config fields ---------------------------------------------------------


def _template_for_image(engine: Engine, body: EndpointBody) -> str:
    fields: dict[str, Any] = {"name": f"{body.name or 'endpoint'} (image)", "imageName": body.image}
    container = {"dockerArgs": body.args, "containerDiskInGb": body.disk, "env": body.env}
    container |= {"ports": ",".join(body.ports) if body.ports else None}
    fields |= {k: v for k, v in container.items() if v is not None}
    return admin.save_template(engine, fields).id


def _config_fields(engine: Engine, body: EndpointBody) -> dict[str, Any]:
    """The config fields ``body`` sets (only those: a PATCH changes nothing else)."""
    if body.templateId and body.image:
        raise admin.InvalidInput("give either templateId or image, not both")
    fields: dict[str, Any] = {"name": body.name, "templateId": body.templateId, "type": body.type}
    if body.image:
        fields["templateId"] = _template_for_image(engine, body)
    elif body.env is not None:
        fields["env"] = body.env
    if body.gpu is not None:
        gpu = body.gpu
        fields["gpuIds"] = ",".join(gpu.pools) if gpu.pools else None
        fields["gpuCount"] = gpu.count
        cuda = gpu.allowedCudaVersions
        fields["allowedCudaVersions"] = ",".join(cuda) if cuda is not None else None
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


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


def _split(value: Any) -> list[str]:
    return [part for part in (value or "").split(",") if part]


def endpoint_view(request: web.Request, engine: Engine, state: EndpointState) -> dict[str, Any]:
    """The REST v2 ``Endpoint`` object for ``state``."""
    config = state.config
    template = engine.templates.get(config.templateId)
    base = f"{request.scheme}://{request.host}/v2/{config.id}"
    operations = {
        "run": "run", "runSync": "runsync", "status": "status", "stream": "stream",
        "cancel": "cancel", "retry": "retry", "purgeQueue": "purge-queue", "health": "health",
    }  # fmt: skip
    scaling_key = "queueDelay" if config.scalerType == "QUEUE_DELAY" else "requestCount"
    return {
        "id": config.id,
        "name": config.name,
        "type": admin.stored(config, "type", admin.QUEUE),
        "templateId": config.templateId,
        "image": template.imageName if template else None,
        "env": admin.endpoint_env(engine, config),
        "gpu": {
            "pools": _split(config.gpuIds),
            "count": config.gpuCount,
            "allowedCudaVersions": _split(admin.stored(config, "allowedCudaVersions")),
        },
        "workers": {
            "min": config.workersMin,
            "max": config.workersMax,
            "idleTimeout": _number(config.idleTimeout),
        },
        "scaling": {"type": config.scalerType, scaling_key: _number(config.scalerValue)},
        "flashboot": admin.flashboot_type(config),
        "timeout": config.executionTimeoutMs,
        "dataCenterIds": _split(admin.stored(config, "locations")),
        "networkVolumes": admin.stored(config, "networkVolumeIds", []),
        "requestUrls": {key: f"{base}/{op}" for key, op in operations.items()},
        "createdAt": admin.iso_time(state.created_at),
    }


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
    """Turn this module's errors into problem documents (other routes keep theirs)."""
    route = request.match_info.route.name or ""
    if not route.startswith("rest:"):
        response: web.StreamResponse = await handler(request)
        return response
    try:
        response = await handler(request)
    except ApiError as exc:
        return problem(exc.status, exc.message)
    except UnknownEndpoint as exc:
        return problem(404, str(exc))
    except admin.InvalidInput as exc:
        return problem(422, str(exc))
    return response


async def list_endpoints(request: web.Request) -> web.Response:
    """``GET /v2/serverless``."""
    engine = request.app[ENGINE]
    views = [endpoint_view(request, engine, s) for s in engine.endpoints.values()]
    return ok({"endpoints": views})


async def create(request: web.Request) -> web.Response:
    """``POST /v2/serverless``: requires ``name``, ``type``, ``scaling`` and a template."""
    engine = request.app[ENGINE]
    body = await _read_body(request)
    missing = [name for name in ("name", "type", "scaling") if getattr(body, name) is None]
    if missing:
        raise admin.InvalidInput(f"required field(s) missing: {', '.join(missing)}")
    if not body.templateId and not body.image:
        raise admin.InvalidInput("either templateId or image is required")
    fields = _config_fields(engine, body)
    fields.setdefault("flashboot", False)  # REST v2's default is OFF
    fields.setdefault("flashBootType", "OFF")
    fields.setdefault("executionTimeoutMs", _DEFAULT_TIMEOUT_MS)
    state = admin.create_endpoint(engine, fields)
    return ok(endpoint_view(request, engine, state), status=201)


async def get_one(request: web.Request) -> web.Response:
    """``GET /v2/serverless/{id}``."""
    engine = request.app[ENGINE]
    state = engine.endpoint(request.match_info["endpoint_id"])
    return ok(endpoint_view(request, engine, state))


async def patch(request: web.Request) -> web.Response:
    """``PATCH /v2/serverless/{id}``: any subset of the create fields."""
    engine = request.app[ENGINE]
    endpoint_id = request.match_info["endpoint_id"]
    engine.endpoint(endpoint_id)  # 404 before a template is created for nothing
    body = await _read_body(request)
    state = admin.update_endpoint(engine, endpoint_id, _config_fields(engine, body))
    return ok(endpoint_view(request, engine, state))


async def delete(request: web.Request) -> web.Response:
    """``DELETE /v2/serverless/{id}``: its unfinished jobs end ``CANCELLED``."""
    admin.delete_endpoint(
        request.app[ENGINE], request.match_info["endpoint_id"], require_scaled_down=False
    )
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    """Register ``/v2/serverless`` routes (call before the queue API's ``setup``)."""
    app.middlewares.append(problems)
    app.router.add_get("/v2/serverless", list_endpoints, name="rest:list")
    app.router.add_post("/v2/serverless", create, name="rest:create")
    item = "/v2/serverless/{endpoint_id}"
    app.router.add_get(item, get_one, name="rest:get")
    app.router.add_patch(item, patch, name="rest:patch")
    app.router.add_delete(item, delete, name="rest:delete")
