"""The two admin transports, REST v2 and GraphQL, behind one small interface.

Both take and return endpoint settings under the official SDK's GraphQL names
(:data:`ENDPOINT_KEYS`) and translate to and from their own wire shapes here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol
from urllib.parse import quote

import httpx

from bridge.errors import AdminError, BadRequestError, NotFoundError, ProtocolError
from bridge.runpod import _flows as flows
from bridge.runpod import _protocol as wire
from bridge.runpod._config import Secret
from bridge.runpod._policy import Runtime
from bridge.runpod.sync import _Driver

log = logging.getLogger("bridge.runpod")

ENDPOINT_KEYS: Final = (
    "id",
    "name",
    "status",
    "templateId",
    "gpuIds",
    "gpuCount",
    "networkVolumeId",
    "locations",
    "idleTimeout",
    "scalerType",
    "scalerValue",
    "workersMin",
    "workersMax",
    "flashboot",
    "allowedCudaVersions",
)
ADMIN_TIMEOUT: Final = 30.0


def _status(endpoint: dict[str, Any]) -> dict[str, Any]:
    # Neither admin API reports an endpoint status; the seed's examples print one. Derived
    # from the configuration alone: an endpoint allowed no workers cannot run jobs.
    if endpoint.get("status") is None:
        endpoint["status"] = "DISABLED" if endpoint.get("workersMax") == 0 else "ACTIVE"
    return endpoint


class AdminTransport(Protocol):
    """What the admin functions need from a transport."""

    def create(self, fields: Mapping[str, Any]) -> dict[str, Any]: ...

    def list(self) -> list[dict[str, Any]]: ...

    def update(self, endpoint_id: str, fields: Mapping[str, Any]) -> dict[str, Any]: ...

    def delete(self, endpoint_id: str) -> None: ...


def _split(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def _join(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ",".join(str(v) for v in value) if value else None


class _Base:
    def __init__(
        self, api_base: str, secret: Secret | None, client: httpx.Client | None = None
    ) -> None:
        self.api_base = api_base
        self.driver = _Driver(client, secret, Runtime())

    def send(self, method: str, path: str, op: str, body: Any = None, *, idempotent: bool) -> Any:
        content = None if body is None else json.dumps(body).encode()
        request = wire.Request(
            method,
            f"{self.api_base}{path}",
            op,
            "",
            content=content,
            timeout=ADMIN_TIMEOUT,
            idempotent=idempotent,
        )
        try:
            return self.driver.run(flows.call(request, self.driver.runtime))
        except BadRequestError as error:
            # Refused settings are an AdminError whichever transport said so (GraphQL
            # reports them as errors in a 200 reply).
            raise AdminError(f"{op}: {error.message}") from error


class RestTransport(_Base):
    """REST v2: ``{base}/v2/serverless[/{id}]``."""

    path = "/v2/serverless"

    def create(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        body = {"type": "QUEUE", **_to_rest(fields)}
        return _from_rest(self.send("POST", self.path, "create", body, idempotent=False))

    def list(self) -> list[dict[str, Any]]:
        reply = self.send("GET", self.path, "list", idempotent=True)
        items = reply.get("endpoints") if isinstance(reply, dict) else reply
        if not isinstance(items, list):
            raise ProtocolError(f"list: expected a list of endpoints, got {str(reply)[:120]}")
        return [_from_rest(item) for item in items]

    def get(self, endpoint_id: str) -> dict[str, Any]:
        path = f"{self.path}/{quote(endpoint_id, safe='')}"
        return _from_rest(self.send("GET", path, "get", idempotent=True))

    def update(self, endpoint_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        fields = dict(fields)
        if ("scalerType" in fields) != ("scalerValue" in fields):
            # REST v2 sets the scaler as one object: complete it from the current value.
            current = self.get(endpoint_id)
            fields.setdefault("scalerType", current["scalerType"])
            fields.setdefault("scalerValue", current["scalerValue"])
        path = f"{self.path}/{quote(endpoint_id, safe='')}"
        # A PATCH sets fields to given values: repeating it is harmless.
        return _from_rest(self.send("PATCH", path, "update", _to_rest(fields), idempotent=True))

    def delete(self, endpoint_id: str) -> None:
        path = f"{self.path}/{quote(endpoint_id, safe='')}"
        self.send("DELETE", path, "delete", idempotent=True)


def _to_rest(fields: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {k: fields[k] for k in ("name", "templateId") if k in fields}
    gpu = {
        "pools": _split(fields.get("gpuIds")),
        "count": fields.get("gpuCount"),
        "allowedCudaVersions": _split(fields.get("allowedCudaVersions")),
    }
    workers = {
        "min": fields.get("workersMin"),
        "max": fields.get("workersMax"),
        # REST v2 refuses an idle timeout with the REQUEST_COUNT scaler (it has none).
        "idleTimeout": None
        if fields.get("scalerType") == "REQUEST_COUNT"
        else fields.get("idleTimeout"),
    }
    for key, group in (("gpu", gpu), ("workers", workers)):
        if any(v is not None for v in group.values()):
            body[key] = {k: v for k, v in group.items() if v is not None}
    if "scalerType" in fields:
        kind = fields["scalerType"]
        value_key = "queueDelay" if kind == "QUEUE_DELAY" else "requestCount"
        body["scaling"] = {"type": kind, value_key: fields.get("scalerValue")}
    if "networkVolumeId" in fields:
        body["networkVolumes"] = _split(fields["networkVolumeId"]) or []
    if "locations" in fields:
        body["dataCenterIds"] = _split(fields["locations"]) or []
    if "flashboot" in fields:
        body["flashboot"] = "FLASHBOOT" if fields["flashboot"] else "OFF"
    return body


def _from_rest(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ProtocolError(f"expected an endpoint object, got {str(item)[:120]}")
    gpu, workers = item.get("gpu") or {}, item.get("workers") or {}
    scaling = item.get("scaling") or {}
    kind = scaling.get("type")
    volumes = item.get("networkVolumes") or []
    return _status(
        {
            "id": item.get("id"),
            "name": item.get("name"),
            "status": item.get("status"),
            "templateId": item.get("templateId"),
            "gpuIds": _join(gpu.get("pools")),
            "gpuCount": gpu.get("count"),
            "networkVolumeId": volumes[0] if volumes else None,
            "locations": _join(item.get("dataCenterIds")),
            "idleTimeout": workers.get("idleTimeout"),
            "scalerType": kind,
            "scalerValue": scaling.get("queueDelay" if kind == "QUEUE_DELAY" else "requestCount"),
            "workersMin": workers.get("min"),
            "workersMax": workers.get("max"),
            "flashboot": item.get("flashboot") not in (None, False, "OFF"),
            "allowedCudaVersions": _join(gpu.get("allowedCudaVersions")),
        }
    )


_FIELDS: Final = (
    "id name templateId gpuIds gpuCount networkVolumeId locations idleTimeout "
    "scalerType scalerValue workersMin workersMax flashBootType allowedCudaVersions"
)
SAVE: Final = (
    "mutation saveEndpoint($input: EndpointInput!) "
    f"{{ saveEndpoint(input: $input) {{ {_FIELDS} }} }}"
)
LIST: Final = f"query endpoints {{ myself {{ endpoints {{ {_FIELDS} }} }} }}"
SWAP_TEMPLATE: Final = (
    "mutation updateEndpointTemplate($input: UpdateEndpointTemplateInput!) "
    f"{{ updateEndpointTemplate(input: $input) {{ {_FIELDS} }} }}"
)
DELETE: Final = "mutation deleteEndpoint($id: String!) { deleteEndpoint(id: $id) }"


class GraphQLTransport(_Base):
    """GraphQL at ``{base}/graphql``; every value travels in ``variables``."""

    def query(
        self, document: str, variables: dict[str, Any], field: str, *, idempotent: bool
    ) -> Any:
        """Run ``document``; return ``data[field]``. Errors raise an AdminError naming
        every message, unless the field came back anyway (then they are logged)."""
        op = document.split("(", 1)[0].split("{", 1)[0].split()[-1]
        body = {"query": document, "variables": variables}
        reply = self.send("POST", "/graphql", op, body, idempotent=idempotent)
        if not isinstance(reply, dict) or not isinstance(reply.get("data") or {}, dict):
            raise ProtocolError(f"{op}: not a GraphQL reply: {str(reply)[:120]}")
        value = (reply.get("data") or {}).get(field)
        errors = reply.get("errors") or []
        if errors:
            messages = "; ".join(str(e.get("message", e)) for e in errors if e) or "error"
            if value is None:
                raise AdminError(f"{op}: {messages}")
            log.warning("%s: GraphQL reported errors next to its data: %s", op, messages)
        return value

    def create(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        saved = self.query(SAVE, {"input": _to_graphql(fields)}, "saveEndpoint", idempotent=False)
        return _from_graphql(saved)

    def list(self) -> list[dict[str, Any]]:
        myself = self.query(LIST, {}, "myself", idempotent=True)
        items = (myself or {}).get("endpoints") or []
        return [_from_graphql(item) for item in items]

    def update(self, endpoint_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        current = self._get(endpoint_id)  # an unknown id is a NotFoundError, as over REST
        if set(fields) == {"templateId"}:
            swap = {"endpointId": endpoint_id, "templateId": fields["templateId"]}
            swapped = self.query(
                SWAP_TEMPLATE, {"input": swap}, "updateEndpointTemplate", idempotent=True
            )
            return _from_graphql(swapped)
        # saveEndpoint with an id replaces the endpoint: send its current settings merged
        # with the changes.
        merged = {k: v for k, v in current.items() if k != "status" and v is not None}
        merged.update(fields)
        saved = self.query(SAVE, {"input": _to_graphql(merged)}, "saveEndpoint", idempotent=True)
        return _from_graphql(saved)

    def _get(self, endpoint_id: str) -> dict[str, Any]:
        for item in self.list():
            if item["id"] == endpoint_id:
                return item
        raise NotFoundError(f"no endpoint with id {endpoint_id!r}", status_code=404)

    def delete(self, endpoint_id: str) -> None:
        # GraphQL refuses to delete an endpoint that may still have workers (REST does
        # not): scale it to zero first so that both transports behave the same.
        current = self._get(endpoint_id)
        if current["workersMin"] or current["workersMax"]:
            self.update(endpoint_id, {"workersMin": 0, "workersMax": 0})
        self.query(DELETE, {"id": endpoint_id}, "deleteEndpoint", idempotent=True)


def _to_graphql(fields: Mapping[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in fields.items() if k != "flashboot"}
    if "flashboot" in fields:
        data["flashBootType"] = "FLASHBOOT" if fields["flashboot"] else "OFF"
    return data


def _from_graphql(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ProtocolError(f"expected an endpoint object, got {str(item)[:120]}")
    result = {key: item.get(key) for key in ENDPOINT_KEYS}
    result["flashboot"] = item.get("flashBootType") not in (None, "OFF")
    return _status(result)
