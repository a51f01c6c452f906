"""RunPod's GraphQL admin API at ``/graphql``, parsed and executed by graphql-core.

Serves what runpod 1.12 and runpodctl send: ``saveEndpoint`` (create; update when
``id`` is given), ``myself`` (``id``, ``email``, ``pubKey``, ``endpoints``,
``podTemplates``, ``networkVolumes``, ``serverlessDiscount``), ``updateEndpointTemplate``,
``deleteEndpoint`` and ``saveTemplate`` (with ``startJupyter``, ``startScript``,
``advancedStart``), with values inline (as the SDK splices them into
the document) or as variables. Requests are JSON ``{"query", "variables"?,
"operationName"?}`` by POST; GET with ``?query=`` serves queries only. GraphQL errors
come back with HTTP 200 as ``{"errors": [{"message": …}], "data": …}``; a body that is
not a GraphQL request is a 400 ``{"error": …}``.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import graphql
from aiohttp import web
from graphql import GraphQLError, GraphQLResolveInfo

from bridge.emulator import admin
from bridge.emulator.engine import Engine
from bridge.emulator.http import ENGINE, ApiError, ok, read_json
from bridge.emulator.settings import TemplateConfig
from bridge.emulator.state import EndpointState

log = logging.getLogger("bridge.emulator.graphql")

_MAX_BODY = 1024 * 1024

SDL = """
enum FlashBootType { OFF FLASHBOOT PRIORITY_FLASHBOOT }

type EnvironmentVariable { key: String value: String }
input EnvironmentVariableInput { key: String! value: String }

type NetworkVolume { id: String name: String size: Int dataCenterId: String }
type Pod { id: String desiredStatus: String }

type Endpoint {
  id: String! name: String type: String userId: String version: Int createdAt: String
  templateId: String env: [EnvironmentVariable] aiKey: String
  gpuIds: String gpuCount: Int allowedCudaVersions: String flashBootType: FlashBootType
  locations: String networkVolumeId: String networkVolume: NetworkVolume
  workersMin: Int workersMax: Int workersStandby: Int idleTimeout: Int
  scalerType: String scalerValue: Int executionTimeoutMs: Int pods: [Pod]
}

type PodTemplate {
  id: String! name: String imageName: String dockerArgs: String isServerless: Boolean
  containerDiskInGb: Int volumeInGb: Int volumeMountPath: String ports: String
  env: [EnvironmentVariable] containerRegistryAuthId: String startSsh: Boolean
  startJupyter: Boolean startScript: String advancedStart: Boolean
  isPublic: Boolean readme: String
}

type ServerlessDiscount { userId: String type: String discountFactor: Float expirationDate: String }

type User {
  id: String! email: String pubKey: String
  endpoints: [Endpoint!]! podTemplates: [PodTemplate!]! networkVolumes: [NetworkVolume!]!
  serverlessDiscount: ServerlessDiscount
}

input EndpointInput {
  id: String name: String type: String templateId: String env: [EnvironmentVariableInput!]
  gpuIds: String gpuCount: Int allowedCudaVersions: String flashBootType: FlashBootType
  locations: String networkVolumeId: String modelReferences: [String!]
  workersMin: Int workersMax: Int idleTimeout: Int
  scalerType: String scalerValue: Int executionTimeoutMs: Int
}

input UpdateEndpointTemplateInput { endpointId: String! templateId: String! }

input SaveTemplateInput {
  id: String name: String! imageName: String! dockerArgs: String isServerless: Boolean
  containerDiskInGb: Int volumeInGb: Int volumeMountPath: String ports: String
  env: [EnvironmentVariableInput!] containerRegistryAuthId: String startSsh: Boolean
  startJupyter: Boolean startScript: String advancedStart: Boolean
  isPublic: Boolean readme: String
}

type Query { myself: User! }

type Mutation {
  saveEndpoint(input: EndpointInput!): Endpoint
  updateEndpointTemplate(input: UpdateEndpointTemplateInput): Endpoint
  deleteEndpoint(id: String!): Boolean
  saveTemplate(input: SaveTemplateInput): PodTemplate
}
"""

# GraphQL's endpoint type names differ from the REST/stored ones.
_TYPES_IN = {"QB": "QUEUE", "LB": "LOAD_BALANCER"}
_TYPES_OUT = {v: k for k, v in _TYPES_IN.items()}
# Sent as "" by runpod 1.12 when unset; stored (and reported) as unset.
_BLANK_MEANS_UNSET = ("networkVolumeId", "locations", "allowedCudaVersions")
_EXPECTED = (admin.InvalidInput, LookupError, GraphQLError)  # the caller's fault


# -- shapes ------------------------------------------------------------------------------


def _env_list(env: Any) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in (env or {}).items()]


def _env_dict(items: list[dict[str, Any]] | None) -> dict[str, str]:
    return {item["key"]: item.get("value") or "" for item in items or []}


def endpoint_view(engine: Engine, state: EndpointState) -> dict[str, Any]:
    """The GraphQL ``Endpoint`` object for ``state``; unset RunPod fields are null."""
    config = state.config
    volume = admin.stored(config, "networkVolumeId")
    return {
        "aiKey": None,
        "allowedCudaVersions": admin.stored(config, "allowedCudaVersions"),
        "createdAt": admin.iso_time(state.created_at),
        "env": _env_list(admin.endpoint_env(engine, config)),
        "executionTimeoutMs": config.executionTimeoutMs,
        "flashBootType": admin.flashboot_type(config),
        "gpuCount": config.gpuCount,
        "gpuIds": config.gpuIds,
        "id": config.id,
        "idleTimeout": math.ceil(config.idleTimeout),
        "locations": admin.stored(config, "locations"),
        "name": config.name,
        "networkVolume": {"id": volume, "dataCenterId": None} if volume else None,
        "networkVolumeId": volume,
        "pods": [{"id": w.id, "desiredStatus": "RUNNING"} for w in state.workers.values()],
        "scalerType": config.scalerType,
        # REST allows a fractional queue delay that GraphQL's Int cannot carry: round up
        # (never report scaling up earlier than configured).
        "scalerValue": math.ceil(config.scalerValue),
        "templateId": config.templateId,
        "type": _TYPES_OUT.get(admin.stored(config, "type", admin.QUEUE)),
        "userId": admin.USER_ID,
        "version": admin.stored(config, "version", 0),
        "workersMax": config.workersMax,
        "workersMin": config.workersMin,
        "workersStandby": None,
    }


def _template_view(template: TemplateConfig) -> dict[str, Any]:
    defaults = {"startSsh": True, "startJupyter": False, "startScript": "", "advancedStart": False}
    view = {**defaults, **template.model_dump()}
    return {**view, "env": _env_list(admin.stored(template, "env"))}


def _endpoint_fields(given: dict[str, Any]) -> dict[str, Any]:
    """``EndpointInput`` → config fields; only the fields present (an update is partial)."""
    fields = {k: v for k, v in given.items() if v is not None and k != "id"}
    fields |= {name: None for name in _BLANK_MEANS_UNSET if fields.get(name) == ""}
    if "flashBootType" in fields:
        fields.update(admin.flashboot_fields(fields.pop("flashBootType")))
    if "type" in fields:
        fields["type"] = _TYPES_IN.get(fields["type"], fields["type"])
    if "env" in fields:
        fields["env"] = _env_dict(fields["env"])
    return fields


# -- resolvers: (root, info, **arguments); the engine is the context ---------------------


def _myself(_root: None, info: GraphQLResolveInfo[Engine]) -> dict[str, Any]:
    engine = info.context
    return {
        "id": admin.USER_ID,
        "email": None,
        "pubKey": None,
        "endpoints": [endpoint_view(engine, s) for s in engine.endpoints.values()],
        "podTemplates": [_template_view(t) for t in engine.templates.values()],
        "networkVolumes": [],
        "serverlessDiscount": None,  # the emulated account has none
    }


def _save_endpoint(_root: None, info: GraphQLResolveInfo[Engine], **args: Any) -> dict[str, Any]:
    engine = info.context
    given: dict[str, Any] = args["input"]
    fields = _endpoint_fields(given)
    if given.get("id"):
        state = admin.update_endpoint(engine, given["id"], fields)
    else:
        if not fields.get("name"):
            raise admin.InvalidInput("name is required")
        fields.setdefault("flashboot", False)  # omitted means off, as the SDK sends it
        state = admin.create_endpoint(engine, fields)
    return endpoint_view(engine, state)


def _update_endpoint_template(
    _root: None, info: GraphQLResolveInfo[Engine], **args: Any
) -> dict[str, Any]:
    given = args.get("input")
    if not given:
        raise admin.InvalidInput("input is required")
    changes = {"templateId": given["templateId"]}
    state = admin.update_endpoint(info.context, given["endpointId"], changes)
    return endpoint_view(info.context, state)


def _delete_endpoint(_root: None, info: GraphQLResolveInfo[Engine], **args: Any) -> None:
    admin.delete_endpoint(info.context, args["id"], require_scaled_down=True)


def _save_template(_root: None, info: GraphQLResolveInfo[Engine], **args: Any) -> dict[str, Any]:
    given = args.get("input")
    if not given:
        raise admin.InvalidInput("input is required")
    fields = {k: v for k, v in given.items() if v is not None}
    if "env" in fields:
        fields["env"] = _env_dict(fields["env"])
    return _template_view(admin.save_template(info.context, fields))


SCHEMA = graphql.build_schema(SDL)
for _type, _field, _resolve in (
    (SCHEMA.query_type, "myself", _myself),
    (SCHEMA.mutation_type, "saveEndpoint", _save_endpoint),
    (SCHEMA.mutation_type, "updateEndpointTemplate", _update_endpoint_template),
    (SCHEMA.mutation_type, "deleteEndpoint", _delete_endpoint),
    (SCHEMA.mutation_type, "saveTemplate", _save_template),
):
    assert _type is not None  # both root types are declared in SDL above
    _type.fields[_field].resolve = _resolve


# -- HTTP ------------------------------------------------------------------------------------


def _request_params(raw: Any) -> tuple[str, dict[str, Any] | None, str | None]:
    if not isinstance(raw, dict):
        raise ApiError(400, 'body must be a JSON object like {"query": "..."}')
    query, variables, operation = raw.get("query"), raw.get("variables"), raw.get("operationName")
    if not isinstance(query, str) or not query.strip():
        raise ApiError(400, "'query' must be a non-empty string holding a GraphQL document")
    if variables is not None and not isinstance(variables, dict):
        raise ApiError(400, "'variables' must be a JSON object")
    if operation is not None and not isinstance(operation, str):
        raise ApiError(400, "'operationName' must be a string")
    return query, variables, operation


def _from_query_string(request: web.Request) -> dict[str, Any]:
    raw: dict[str, Any] = {k: request.query.get(k) for k in ("query", "operationName")}
    if "variables" in request.query:
        try:
            raw["variables"] = json.loads(request.query["variables"])
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"'variables' is not valid JSON: {exc}") from None
    return raw


def _formatted(result: graphql.ExecutionResult) -> dict[str, Any]:
    errors = []
    for error in result.errors or ():
        cause = error.original_error
        if cause is not None and not isinstance(cause, _EXPECTED):
            log.error("GraphQL resolver failed", exc_info=cause)
            error = GraphQLError("internal emulator error (see the emulator's log)", error.nodes)
        errors.append(error.formatted)
    return {"errors": errors, "data": result.data} if errors else {"data": result.data}


def run(
    engine: Engine, document: graphql.DocumentNode, variables: Any, operation: str | None
) -> Any:
    """Validate and execute a parsed document; returns the response body."""
    errors = graphql.validate(SCHEMA, document)
    if errors:  # rejected before execution: the GraphQL spec says no "data" entry then
        return {"errors": [e.formatted for e in errors]}
    result = graphql.execute_sync(
        SCHEMA, document, context_value=engine, variable_values=variables,
        operation_name=operation,
    )  # fmt: skip
    return _formatted(result)


async def graphql_handler(request: web.Request) -> web.Response:
    """``POST /graphql`` (and ``GET /graphql?query=`` for queries)."""
    if request.method == "GET":
        raw: Any = _from_query_string(request)
    else:
        raw = await read_json(request, max_bytes=_MAX_BODY)
    query, variables, operation = _request_params(raw)
    try:
        document = graphql.parse(query)
    except GraphQLError as exc:
        return ok({"errors": [exc.formatted]})
    if request.method == "GET":
        chosen = graphql.get_operation_ast(document, operation)
        if chosen is not None and chosen.operation != graphql.OperationType.QUERY:
            raise ApiError(405, "mutations must be sent with POST", {"Allow": "POST"})
    return ok(run(request.app[ENGINE], document, variables, operation))


def setup(app: web.Application) -> None:
    """Register ``/graphql``."""
    app.router.add_post("/graphql", graphql_handler, name="admin:graphql")
    app.router.add_get("/graphql", graphql_handler, name="admin:graphql-get")
