"""Credentials and base URLs: explicit arguments win over the package globals, which win
over the environment. Everything is resolved at call or construction time."""

from __future__ import annotations

import os
import sys
from typing import Any, Final

DEFAULT_ENDPOINT_URL_BASE: Final = "https://api.runpod.ai/v2"
DEFAULT_API_BASE_URL: Final = "https://api.runpod.io"
USER_AGENT: Final = "bridge-runpod/0.1.0"


class Secret:
    """An API key that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself, for the one place that needs it: the Authorization header."""
        return self._value

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the key masked (keys too short to be real
        ones, as in tests, are left alone: masking them would garble the text)."""
        return text.replace(self._value, "********") if len(self._value) >= 8 else text

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _package_global(name: str) -> Any:
    # The documented defaults are attributes of the package (``runpod.api_key = ...``), so
    # they are looked up there on every call, not copied at import time.
    package = sys.modules.get("bridge.runpod")
    return getattr(package, name, None)


def resolve_key(explicit: str | Secret | None) -> Secret | None:
    """The API key to use: ``explicit``, else ``bridge.runpod.api_key``, else ``RUNPOD_API_KEY``."""
    if isinstance(explicit, Secret):
        return explicit
    value = explicit or _package_global("api_key") or os.environ.get("RUNPOD_API_KEY")
    return Secret(value) if value else None


def resolve_endpoint_base(explicit: str | None) -> str:
    """Queue API base: ``explicit``, else ``bridge.runpod.endpoint_url_base``, else the env."""
    value = (
        explicit
        or _package_global("endpoint_url_base")
        or os.environ.get("RUNPOD_ENDPOINT_BASE_URL")
        or DEFAULT_ENDPOINT_URL_BASE
    )
    return str(value).rstrip("/")


def resolve_api_base(explicit: str | None) -> str:
    """Admin API host: ``explicit``, else ``bridge.runpod.api_base_url``, else the env."""
    value = (
        explicit
        or _package_global("api_base_url")
        or os.environ.get("RUNPOD_API_BASE_URL")
        or DEFAULT_API_BASE_URL
    )
    return str(value).rstrip("/")
