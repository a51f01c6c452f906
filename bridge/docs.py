"""The documentation's generated parts: the configuration reference (from the settings
models) in docs/configuration.md and the Redis key schema (from :mod:`bridge.core.keys`)
in docs/redis.md.

``python -m bridge.docs`` rewrites the blocks between their markers in those pages;
``python -m bridge.docs --check`` exits 1 when one is stale (tests/unit/test_readme.py
fails then too). Every field's type, default and description come from
:class:`~bridge.settings.BridgeSettings`, :class:`~bridge.settings.RouteConfig` and
:class:`~bridge.emulator.settings.EmulatorSettings`, every key from
:func:`bridge.core.keys.schema`, so the tables cannot drift.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bridge.core.keys import schema
from bridge.emulator.settings import EmulatorSettings
from bridge.settings import BridgeSettings, RouteConfig

BEGIN = (
    "<!-- config-reference: generated from the settings models by `python -m bridge.docs`; "
    "tests/unit/test_readme.py fails when it differs -->"
)
END = "<!-- /config-reference -->"
KEYS_BEGIN = (
    "<!-- key-schema: generated from bridge.core.keys by `python -m bridge.docs`; "
    "tests/unit/test_readme.py fails when it differs -->"
)
KEYS_END = "<!-- /key-schema -->"
ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
REDIS = ROOT / "docs" / "redis.md"


def render_type(annotation: Any) -> str:
    """A type as a reader wants it: ``int``, ``str | None``, ``poll | stream``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(render_type(a) for a in args)
    if origin is typing.Annotated:
        return render_type(args[0])
    if origin is not None:
        inner = ", ".join(render_type(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    if annotation is SecretStr:
        return "secret"
    return str(getattr(annotation, "__name__", annotation))


def render_bounds(info: FieldInfo) -> str:
    words = []
    for item in info.metadata:
        if isinstance(item, Ge):
            words.append(f"≥ {item.ge}")
        if isinstance(item, Gt):
            words.append(f"> {item.gt}")
        if isinstance(item, Le):
            words.append(f"≤ {item.le}")
        if isinstance(item, Lt):
            words.append(f"< {item.lt}")
        if isinstance(item, MinLen) and item.min_length > 0:
            words.append("not empty")
        if isinstance(item, MaxLen):
            words.append(f"≤ {item.max_length} chars")
    return ", ".join(words)


def render_default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.default
    if value is PydanticUndefined and info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]  # ours take no arguments
    if value is None:
        return "none"
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        return "built-in: " + ", ".join(f"`{getattr(v, 'id', v)}`" for v in value)
    if isinstance(value, list | dict) and not value:
        return "empty"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value, default=str)}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows(model: type[BaseModel], env: str | None) -> Iterator[str]:
    for name, info in model.model_fields.items():
        kind = render_type(info.annotation)
        bounds = render_bounds(info)
        variable = f"`{env}{name.upper()}`" if env is not None else ""
        fields = [f"`{name}`", variable, f"`{kind}`" + (f" ({bounds})" if bounds else ""),
                  render_default(info), info.description or ""]  # fmt: skip
        yield "| " + " | ".join(cell(f) for f in fields) + " |"


def table(model: type[BaseModel], env: str | None) -> list[str]:
    header = "| field | environment | type | default | what |"
    return [header, "|---|---|---|---|---|", *rows(model, env)]


def reference() -> str:
    """The whole generated block, markers included."""
    bridge_env = str(BridgeSettings.model_config.get("env_prefix", ""))
    nested = BridgeSettings.model_config.get("env_nested_delimiter")
    emulator_env = str(EmulatorSettings.model_config.get("env_prefix", ""))
    route_env = f"{bridge_env}ROUTES{nested}<NAME>{nested}"
    lines = [
        BEGIN,
        "",
        f"**Bridge** (`bridge worker`, `beat`, `webhooks` and the other commands): "
        f"`{bridge_env}<FIELD>` variables, or top-level keys of the routes file "
        "(`--config` / `BRIDGE_CONFIG`).",
        "",
        *table(BridgeSettings, bridge_env),
        "",
        "**A route**: one `[routes.NAME]` table of the routes file, or the whole set as JSON in "
        f"`{bridge_env}ROUTES`, or one field at a time as `{route_env}<FIELD>`.",
        "",
        *table(RouteConfig, route_env),
        "",
        f"**Emulator** (`bridge emulator`): `{emulator_env}<FIELD>` variables (lists "
        "comma-separated or JSON), or the `[server]` table of its TOML file (`--config`, "
        "see `config/emulator.toml` for templates and endpoints).",
        "",
        *table(EmulatorSettings, emulator_env),
        "",
        END,
    ]
    return "\n".join(lines)


def key_schema() -> str:
    """The generated key-schema block, markers included (default prefix and streams)."""
    lines = [KEYS_BEGIN, "", "| key | type | lives | what |", "|---|---|---|---|"]
    for spec in schema():
        fields = [f"`{spec.pattern}`", spec.type, spec.lifetime, spec.purpose]
        lines.append("| " + " | ".join(cell(f) for f in fields) + " |")
    return "\n".join([*lines, "", KEYS_END])


BLOCKS = {"configuration reference": (CONFIGURATION, BEGIN, END, reference),
          "key schema": (REDIS, KEYS_BEGIN, KEYS_END, key_schema)}  # fmt: skip


def current(text: str, begin: str = BEGIN, end_marker: str = END) -> str | None:
    """A block as a page has it now (None when its markers are missing)."""
    start = text.find(begin)
    end = text.find(end_marker, start)
    return text[start : end + len(end_marker)] if start >= 0 and end >= 0 else None


def main(argv: list[str]) -> int:
    stale = []
    pages: dict[Path, str] = {}
    for name, (page, begin, end, render) in BLOCKS.items():
        text = pages.setdefault(page, page.read_text(encoding="utf-8"))
        block = current(text, begin, end)
        shown = page.relative_to(ROOT)
        if block is None:
            print(f"{shown} has no {begin!r} … {end!r} block", file=sys.stderr)
            return 1
        if block != render():
            stale.append(f"{shown}'s {name}")
            pages[page] = text.replace(block, render())
    if "--check" in argv:
        print(f"stale: {', '.join(stale)}" if stale else "up to date")
        return int(bool(stale))
    for page, text in pages.items():
        page.write_text(text, encoding="utf-8")
    names = ", ".join(str(p.relative_to(ROOT)) for p in pages)
    print(f"the generated blocks of {names} are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
