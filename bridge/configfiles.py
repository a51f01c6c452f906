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


def errors_of(exc: ValidationError, prefix: str = "") -> list[tuple[tuple[Any, ...], str]]:
    """Each error's location (inside the model) and one line for a person: where
    (``prefix.field.0.sub``) and what, never the value."""
    found = []
    for err in exc.errors():
        where = ".".join([*([prefix] if prefix else []), *(str(p) for p in err["loc"])])
        # pydantic says "Extra inputs are not permitted": it is a key we do not know
        what = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        found.append((tuple(err["loc"]), f"{where or '(root)'}: {what}"))
    return found


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """One line per error: where (``prefix.field.0.sub``) and what, never the value."""
    return "\n".join(f"  {text}" for _, text in errors_of(exc, prefix))


class Problems:
    """Every problem found in a configuration, raised at once as one ConfigError whose
    first line names the sources involved (the file, the environment, the caller)."""

    def __init__(self, what: str, path: Path | None) -> None:
        self.what = what
        self.path = path
        self.lines: list[str] = []
        self.sources: set[str] = set()

    def add(self, source: str, text: str, variable: str | None = None) -> None:
        """One problem from ``source`` (``file``, ``env`` or ``given``); ``variable``
        names the environment variable to change, when there is one."""
        self.sources.add(source)
        self.lines.append(f"  {text} [{variable}]" if variable else f"  {text}")

    def raise_any(self) -> None:
        if not self.lines:
            return
        where = {"file": f"in {self.path}", "env": "in the environment", "given": "given"}
        named = " and ".join(where[s] for s in where if s in self.sources)
        raise ConfigError(f"invalid {self.what} settings {named}:\n" + "\n".join(self.lines))
