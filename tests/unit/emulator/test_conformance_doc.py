"""docs/emulator.md's conformance table names the test pinning each behaviour: every test
it names must exist, and every item of issue 16 must be in it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from bridge.emulator.settings import PROFILES, EmulatorSettings

REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


@pytest.fixture(scope="module")
def guide(repo_root: Path) -> str:
    return (repo_root / "docs" / "emulator.md").read_text(encoding="utf-8")


def test_every_test_the_table_names_exists(guide: str, repo_root: Path) -> None:
    named = REFERENCE.findall(guide)
    assert len(named) > 40
    missing = []
    for path, name in named:
        source = repo_root / path
        tree = ast.parse(source.read_text(encoding="utf-8")) if source.exists() else None
        defined = {
            node.name
            for node in ast.walk(tree or ast.Module(body=[], type_ignores=[]))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        if name not in defined:
            missing.append(f"{path}::{name}")
    assert missing == [], "docs/emulator.md names tests that do not exist"


def test_every_runpod_profile_setting_is_in_the_profiles_table(guide: str) -> None:
    table = guide.split("## Profiles", 1)[1].split("## Conformance table", 1)[0]
    for name in PROFILES["runpod"]:
        if name != "endpoints":
            assert f"`{name}`" in table, name
    assert set(PROFILES["runpod"]) <= set(EmulatorSettings.model_fields)


@pytest.mark.parametrize("item", range(1, 10))
def test_every_item_of_issue_16_has_a_section(guide: str, item: int) -> None:
    assert re.search(rf"item[s]? [\d ,and]*\b{item}\b", guide), f"issue 16 item {item}"
