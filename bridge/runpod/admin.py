"""Endpoint administration: create, list, update and delete serverless endpoints.

Two transports behind one interface, chosen per call (``transport=``), else by
``bridge.runpod.admin_transport``, else ``RUNPOD_ADMIN_TRANSPORT``: ``"rest"`` (default;
REST v2 at ``{base}/v2/serverless``) and ``"graphql"`` (``{base}/graphql``, always with
variables — no value is ever spliced into a query). Both return the same keys, named as
the official SDK's GraphQL replies name them (see :data:`ENDPOINT_KEYS`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Final

from bridge.errors import ConfigError
from bridge.runpod import _admin_transports as transports
from bridge.runpod._config import Secret, resolve_api_base, resolve_key

ENDPOINT_KEYS: Final = transports.ENDPOINT_KEYS
"""Keys of every endpoint dict these functions return, whichever transport ran. ``status``
is ``"ACTIVE"``, or ``"DISABLED"`` for an endpoint allowed no workers (neither admin API
reports a status of its own); ``flashboot`` is a bool; lists are comma-joined strings."""

_CHANGES: Final = {
    "name": "name",
    "template_id": "templateId",
    "gpu_ids": "gpuIds",
    "gpu_count": "gpuCount",
    "network_volume_id": "networkVolumeId",
    "locations": "locations",
    "idle_timeout": "idleTimeout",
    "scaler_type": "scalerType",
    "scaler_value": "scalerValue",
    "workers_min": "workersMin",
    "workers_max": "workersMax",
    "flashboot": "flashboot",
    "allowed_cuda_versions": "allowedCudaVersions",
}


def _transport(
    transport: str | None, api_key: str | None, api_base_url: str | None
) -> transports.AdminTransport:
    package = sys.modules.get("bridge.runpod")
    name = (
        transport
        or getattr(package, "admin_transport", None)
        or os.environ.get("RUNPOD_ADMIN_TRANSPORT")
        or "rest"
    )
    kinds: dict[str, Callable[[str, Secret | None], transports.AdminTransport]] = {
        "rest": transports.RestTransport,
        "graphql": transports.GraphQLTransport,
    }
    if name not in kinds:
        raise ConfigError(f"admin transport must be 'rest' or 'graphql', got {name!r}")
    return kinds[name](resolve_api_base(api_base_url), resolve_key(api_key))


def _fields(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - set(_CHANGES)
    if unknown:
        raise TypeError(f"unknown endpoint setting(s): {', '.join(sorted(unknown))}")
    return {_CHANGES[k]: v for k, v in changes.items() if v is not None}


def create_endpoint(
    name: str,
    template_id: str,
    gpu_ids: str,
    network_volume_id: str | None = None,
    locations: str | None = None,
    idle_timeout: int = 5,
    scaler_type: str = "QUEUE_DELAY",
    scaler_value: int = 4,
    workers_min: int = 0,
    workers_max: int = 3,
    flashboot: bool = False,
    *,
    gpu_count: int = 1,
    allowed_cuda_versions: str | None = None,
    api_key: str | None = None,
    api_base_url: str | None = None,
    transport: str | None = None,
) -> dict[str, Any]:
    """Create a new serverless endpoint.

    Args:
        name: display name.
        template_id: the serverless template its workers run.
        gpu_ids: comma-separated GPU pool / type ids.
        network_volume_id: a network volume to attach.
        locations: comma-separated data centre / region preferences.
        idle_timeout: seconds an idle worker stays up.
        scaler_type: ``QUEUE_DELAY`` or ``REQUEST_COUNT``.
        scaler_value: the scaler's threshold.
        workers_min: workers kept running.
        workers_max: most workers at once.
        flashboot: enable FlashBoot.
        gpu_count: GPUs per worker.
        allowed_cuda_versions: comma-separated CUDA versions.
        api_key: wins over ``bridge.runpod.api_key`` / ``RUNPOD_API_KEY``.
        api_base_url: admin host; wins over ``RUNPOD_API_BASE_URL``.
        transport: ``"rest"`` or ``"graphql"``.

    Returns:
        The created endpoint, with its new ``id`` (keys: :data:`ENDPOINT_KEYS`).
    """
    fields = _fields(
        {
            "name": name,
            "template_id": template_id,
            "gpu_ids": gpu_ids,
            "network_volume_id": network_volume_id,
            "locations": locations,
            "idle_timeout": idle_timeout,
            "scaler_type": scaler_type,
            "scaler_value": scaler_value,
            "workers_min": workers_min,
            "workers_max": workers_max,
            "flashboot": flashboot,
            "gpu_count": gpu_count,
            "allowed_cuda_versions": allowed_cuda_versions,
        }
    )
    return _transport(transport, api_key, api_base_url).create(fields)


def get_endpoints(
    *, api_key: str | None = None, api_base_url: str | None = None, transport: str | None = None
) -> list[dict[str, Any]]:
    """List the account's endpoints.

    Returns:
        One dict per endpoint: ``id``, ``name``, ``status`` and its configuration
        (keys: :data:`ENDPOINT_KEYS`).
    """
    return _transport(transport, api_key, api_base_url).list()


def update_endpoint_template(
    endpoint_id: str,
    template_id: str,
    *,
    api_key: str | None = None,
    api_base_url: str | None = None,
    transport: str | None = None,
) -> dict[str, Any]:
    """Switch an endpoint to another template.

    Returns:
        The updated endpoint (keys: :data:`ENDPOINT_KEYS`).
    """
    return _transport(transport, api_key, api_base_url).update(
        endpoint_id, {"templateId": template_id}
    )


def update_endpoint(
    endpoint_id: str,
    *,
    api_key: str | None = None,
    api_base_url: str | None = None,
    transport: str | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Change any of an endpoint's settings.

    Args:
        endpoint_id: the endpoint to change.
        api_key, api_base_url, transport: as for :func:`create_endpoint`.
        **changes: settings named as :func:`create_endpoint`'s arguments, e.g.
            ``workers_max=5, idle_timeout=10``.

    Returns:
        The updated endpoint (keys: :data:`ENDPOINT_KEYS`).
    """
    fields = _fields(changes)
    if not fields:
        raise TypeError("update_endpoint needs at least one setting to change")
    return _transport(transport, api_key, api_base_url).update(endpoint_id, fields)


def delete_endpoint(
    endpoint_id: str,
    *,
    api_key: str | None = None,
    api_base_url: str | None = None,
    transport: str | None = None,
) -> None:
    """Delete an endpoint, stopping its workers; its unfinished jobs are lost.

    GraphQL refuses to delete an endpoint that may run workers, so on that transport the
    endpoint is first scaled to zero (``workers_min = workers_max = 0``).
    """
    _transport(transport, api_key, api_base_url).delete(endpoint_id)
