"""Admin operations shared by the GraphQL (``admin_graphql``) and REST v2 (``admin_rest``)
transports: ids, validation, and the RunPod fields stored on an endpoint.

Both transports translate their wire shapes into :class:`EndpointConfig` field names and
call the functions here, so a rule (say, ``workersMin <= workersMax``) is written once.
RunPod fields the emulator stores but does not act on (``locations``, ``networkVolumeId``,
``allowedCudaVersions``, ``env``, ``type`` …) live in the config's extra fields.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Container
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from bridge.emulator.engine import Engine, NotAllowed
from bridge.emulator.settings import ACCOUNT, EndpointConfig, TemplateConfig
from bridge.emulator.state import EndpointState

_ALPHABET = string.ascii_lowercase + string.digits
RESERVED_IDS = frozenset({"serverless"})
"""Never handed out as an endpoint id: ``/v2/serverless`` is the REST admin collection."""

USER_ID = ACCOUNT
"""The one account every key of the emulator belongs to (``myself.id``, ``userId``)."""

BOUND_TO = "boundTo"
"""A template's stored field naming the endpoint it belongs to: REST v2 resolves a
``templateId`` / ``image`` into a template of the endpoint's own, deleted with it."""

FLASHBOOT_TYPES = ("OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT")
QUEUE = "QUEUE"


class InvalidInput(ValueError):
    """An admin request asks for something invalid; the message says what and where."""


def new_id(taken: Container[str], length: int = 14) -> str:
    """A fresh id of ``length`` lowercase alphanumerics, like RunPod's ``i02xupws21hp6i``."""
    while True:
        candidate = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        if candidate not in taken and candidate not in RESERVED_IDS:
            return candidate


def iso_time(timestamp: float) -> str:
    """``2026-01-31T12:00:00.123Z`` for a POSIX timestamp."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stored(model: BaseModel, name: str, default: Any = None) -> Any:
    """A stored RunPod field that is not one of the model's declared fields."""
    return (model.model_extra or {}).get(name, default)


def endpoint_env(engine: Engine, config: EndpointConfig) -> dict[str, str]:
    """The environment an endpoint's workers get: its template's, overridden by its own."""
    template = engine.templates.get(config.templateId)
    inherited = stored(template, "env", {}) if template else {}
    return {**inherited, **stored(config, "env", {})}


def flashboot_fields(kind: str) -> dict[str, Any]:
    """Config fields for a FlashBoot setting: the engine only needs on/off (cold start)."""
    if kind not in FLASHBOOT_TYPES:
        raise InvalidInput(f"flashboot must be one of {', '.join(FLASHBOOT_TYPES)}, got {kind!r}")
    return {"flashBootType": kind, "flashboot": kind != "OFF"}


def flashboot_type(config: EndpointConfig) -> str:
    """The endpoint's FlashBoot setting as RunPod names it (``OFF``, ``FLASHBOOT`` …)."""
    kind = stored(config, "flashBootType")
    if isinstance(kind, str):
        return kind
    return "FLASHBOOT" if config.flashboot else "OFF"


def describe(exc: ValidationError) -> str:
    """One line per problem, naming the field: ``workersMax: Input should be >= 0``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _check(engine: Engine, config: EndpointConfig, *, template: bool = True) -> None:
    if template and config.templateId not in engine.templates:
        raise InvalidInput(f"template {config.templateId!r} not found")
    if config.workersMin > config.workersMax:
        raise InvalidInput(
            f"workersMin ({config.workersMin}) must not exceed workersMax ({config.workersMax})"
        )
    kind = stored(config, "type", QUEUE)
    if kind != QUEUE:
        # Load-balancer endpoints proxy raw HTTP to workers; the emulator has no such thing.
        raise InvalidInput(f"endpoint type {kind!r} is not supported: only queue endpoints")


def _validated(fields: dict[str, Any]) -> EndpointConfig:
    try:
        return EndpointConfig.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInput(describe(exc)) from None


def check_create(engine: Engine, fields: dict[str, Any]) -> None:
    """Refuse, before anything is made, config fields :func:`create_endpoint` would refuse
    (the template aside: it may not exist yet).

    Raises:
        InvalidInput: a field is missing or invalid.
    """
    config = _validated({"templateId": "-", **fields, "id": "checked", "version": 0})
    _check(engine, config, template=False)


def create_endpoint(
    engine: Engine, fields: dict[str, Any], *, endpoint_id: str | None = None
) -> EndpointState:
    """Create an endpoint from config fields (RunPod names); it starts serving at once.

    Args:
        engine: the emulator's engine.
        fields: config fields, ``templateId`` included.
        endpoint_id: its id (from :func:`new_id`); a fresh one by default.

    Raises:
        InvalidInput: a field is missing or invalid, or the template does not exist.
    """
    if not fields.get("templateId"):
        raise InvalidInput("templateId is required")
    config = _validated({**fields, "id": endpoint_id or new_id(engine.endpoints), "version": 0})
    _check(engine, config)
    return engine.add_endpoint(config)


def update_endpoint(engine: Engine, endpoint_id: str, changes: dict[str, Any]) -> EndpointState:
    """Apply ``changes`` to a live endpoint: new worker bounds re-scale it, a new template
    serves the jobs started from now on.

    Raises:
        UnknownEndpoint: no endpoint ``endpoint_id``.
        InvalidInput: the merged configuration would be invalid (nothing is changed).
    """
    state = engine.endpoint(endpoint_id)
    if not changes:
        return state
    changes = {**changes, "version": int(stored(state.config, "version", 0)) + 1}
    check_update(engine, endpoint_id, changes)
    previous = state.config.templateId
    state = engine.update_endpoint(endpoint_id, **changes)
    if previous != state.config.templateId:  # its own template, replaced
        _drop_bound_template(engine, previous, endpoint_id)
    return state


def check_update(engine: Engine, endpoint_id: str, changes: dict[str, Any]) -> None:
    """Refuse ``changes`` :func:`update_endpoint` would refuse, changing nothing.

    Raises:
        UnknownEndpoint: no endpoint ``endpoint_id``.
        InvalidInput: the merged configuration would be invalid.
    """
    state = engine.endpoint(endpoint_id)
    _check(engine, _validated({**state.config.model_dump(), **changes}))


def delete_endpoint(engine: Engine, endpoint_id: str, *, require_scaled_down: bool) -> None:
    """Delete an endpoint, and the template bound to it if it has one (REST v2: "deletes
    a serverless endpoint and its bound template"); its unfinished jobs end ``CANCELLED``.

    Args:
        engine: the emulator's engine.
        endpoint_id: the endpoint to delete.
        require_scaled_down: refuse unless ``workersMin == workersMax == 0``, as RunPod's
            GraphQL ``deleteEndpoint`` does.

    Raises:
        UnknownEndpoint: no endpoint ``endpoint_id``.
        InvalidInput: ``require_scaled_down`` and the endpoint still has worker bounds.
    """
    config = engine.endpoint(endpoint_id).config
    if require_scaled_down and (config.workersMin or config.workersMax):
        raise InvalidInput(
            f"endpoint {endpoint_id!r} has workersMin={config.workersMin}, "
            f"workersMax={config.workersMax}: set both to 0 before deleting it"
        )
    engine.delete_endpoint(endpoint_id)
    _drop_bound_template(engine, config.templateId, endpoint_id)


def _drop_bound_template(engine: Engine, template_id: str, endpoint_id: str) -> None:
    """Delete ``endpoint_id``'s own template once no endpoint uses it (GraphQL's
    ``updateEndpointTemplate`` may have pointed another endpoint at it)."""
    template = engine.templates.get(template_id)
    if template is None or stored(template, BOUND_TO) != endpoint_id:
        return
    if not any(s.config.templateId == template_id for s in engine.endpoints.values()):
        engine.delete_template(template_id)


def save_template(engine: Engine, fields: dict[str, Any]) -> TemplateConfig:
    """Create a template, or update the one named by ``fields["id"]``.

    ``imageName`` is what the emulator runs: ``external`` or the name of a handler it
    was configured with at startup (the built-ins ``echo``, ``stream``, ``fail`` and its
    ``handlers``). It is never an import path: the admin API cannot make the server
    import anything new.

    Raises:
        InvalidInput: a field is invalid, ``imageName`` names no allowed handler, or
            ``id`` names no template.
    """
    template_id = fields.get("id")
    if template_id:
        if template_id not in engine.templates:
            raise InvalidInput(f"template {template_id!r} not found")
        fields = {**engine.templates[template_id].model_dump(), **fields}
    else:
        fields = {**fields, "id": new_id(engine.templates, 10)}
    try:
        template = TemplateConfig.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInput(describe(exc)) from None
    try:
        return engine.save_template(template)
    except NotAllowed as exc:
        raise InvalidInput(str(exc)) from None
