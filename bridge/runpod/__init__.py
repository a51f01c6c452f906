"""bridge.runpod: the RunPod queue-endpoint client library. Imports only ``bridge.errors``.

Use it as ``import bridge.runpod as runpod``: ``runpod.Endpoint``, ``runpod.Job`` (blocking,
httpx), ``runpod.AsyncioEndpoint``, ``runpod.AsyncioJob`` (asyncio, aiohttp session from
``bridge.runpod.http_client.ClientSession``), and the admin functions. Credentials: pass
``api_key=`` anywhere, or set the defaults below (read on every call, not only at import).
"""

from __future__ import annotations

import os

from bridge.runpod import http_client
from bridge.runpod._config import DEFAULT_API_BASE_URL, DEFAULT_ENDPOINT_URL_BASE
from bridge.runpod._hooks import Exchange, Hooks
from bridge.runpod._policy import PollPolicy, RetryPolicy
from bridge.runpod._protocol import FINAL_STATES
from bridge.runpod.admin import (
    create_endpoint,
    delete_endpoint,
    get_endpoints,
    update_endpoint,
    update_endpoint_template,
)
from bridge.runpod.asyncio import AsyncioEndpoint, AsyncioJob
from bridge.runpod.sync import Endpoint, Job

api_key: str | None = os.environ.get("RUNPOD_API_KEY") or None
"""Default API key (``RUNPOD_API_KEY``); ``set_credentials()`` or assignment changes it."""

endpoint_url_base: str = os.environ.get("RUNPOD_ENDPOINT_BASE_URL") or DEFAULT_ENDPOINT_URL_BASE
"""Default queue API base (``RUNPOD_ENDPOINT_BASE_URL``, else ``https://api.runpod.ai/v2``)."""

api_base_url: str = os.environ.get("RUNPOD_API_BASE_URL") or DEFAULT_API_BASE_URL
"""Default admin API host (``RUNPOD_API_BASE_URL``, else ``https://api.runpod.io``)."""

admin_transport: str = os.environ.get("RUNPOD_ADMIN_TRANSPORT") or "rest"
"""Default admin transport: ``"rest"`` (REST v2) or ``"graphql"``."""


def set_credentials(api_key: str) -> None:
    """Set the default API key used by every client and admin call in this process.

    Args:
        api_key: the RunPod API key.
    """
    globals()["api_key"] = api_key


__all__ = [
    "FINAL_STATES",
    "AsyncioEndpoint",
    "AsyncioJob",
    "Endpoint",
    "Exchange",
    "Hooks",
    "Job",
    "PollPolicy",
    "RetryPolicy",
    "admin_transport",
    "api_base_url",
    "api_key",
    "create_endpoint",
    "delete_endpoint",
    "endpoint_url_base",
    "get_endpoints",
    "http_client",
    "set_credentials",
    "update_endpoint",
    "update_endpoint_template",
]
