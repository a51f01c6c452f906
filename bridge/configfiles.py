"""Reading configuration files and explaining validation errors, for every settings root
(the bridge's and the emulator's). Imports only ``bridge.errors``."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bridge.errors import ConfigError


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a ConfigError naming ``what``."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} config file {path} is not valid TOML: {exc}") from None


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """One line per error: where (``prefix.field.0.sub``) and what, never the value."""
    lines = []
    for err in exc.errors():
        parts = [prefix] if prefix else []
        parts += [str(p) for p in err["loc"]]
        lines.append(f"  {'.'.join(parts) or '(root)'}: {err['msg']}")
    return "\n".join(lines)
