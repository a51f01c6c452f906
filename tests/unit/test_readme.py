"""The README stays true to the code: the envelope's JSON Schema and the configuration
reference are the generated ones, and its redis-cli examples are envelopes the JSON door
accepts. (tests/integration/test_readme_snippets.py runs its snippets.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bridge import docs
from bridge.core.model import FINAL_STATES
from bridge.emulator.settings import EmulatorSettings
from bridge.ingress.envelope import CancelMessage, Envelope, parse_payload
from bridge.settings import BridgeSettings, RouteConfig

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- envelope-schema: generated; tests/unit/test_readme.py fails when it differs -->"


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_schema_block_is_the_generated_schema(readme: str) -> None:
    block = re.search(re.escape(MARKER) + r"\n```json\n(.*?)\n```", readme, re.DOTALL)
    assert block is not None, "the envelope schema block is missing from README.md"
    generated = json.dumps(Envelope.model_json_schema(), indent=2)
    assert block.group(1) == generated, (
        "README.md's envelope schema is stale: paste "
        "json.dumps(Envelope.model_json_schema(), indent=2)"
    )


def test_redis_cli_examples_are_accepted_envelopes(readme: str) -> None:
    payloads = re.findall(r"XADD bridge:requests '\*' payload \\?\s*'(\{.*?\})'", readme)
    assert len(payloads) == 2
    request, cancel = (parse_payload(p, max_bytes=10_000) for p in payloads)
    assert isinstance(request, Envelope)
    assert request.reply_to == "replies:req-1"
    assert isinstance(cancel, CancelMessage)


def test_reply_table_names_every_final_status(readme: str) -> None:
    section = readme.split("## The bridge worker", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE))
    assert listed == FINAL_STATES


def test_configuration_reference_is_the_generated_one(readme: str) -> None:
    block = docs.current(readme)
    assert block is not None, "the configuration reference block is missing from README.md"
    assert block == docs.reference(), (
        "README.md's configuration reference is stale: run `.venv/bin/python -m bridge.docs`"
    )


@pytest.mark.parametrize("model", [BridgeSettings, RouteConfig, EmulatorSettings])
def test_every_setting_says_what_it_is(model: type[BridgeSettings]) -> None:
    silent = [name for name, info in model.model_fields.items() if not info.description]
    assert silent == [], f"{model.__name__}: give these fields a description: {silent}"


def test_reference_renders_types_defaults_and_variables() -> None:
    reference = docs.reference()
    assert "| `redis_url` | `BRIDGE_REDIS_URL` | `str` | `redis://127.0.0.1:6379/0` |" in reference
    assert (
        "| `mode` | `BRIDGE_ROUTES__<NAME>__MODE` | `poll \\| stream \\| sync \\| webhook` |"
        in (reference)
    )
    assert (
        "| `endpoint_id` | `BRIDGE_ROUTES__<NAME>__ENDPOINT_ID` | `str` (not empty) | required |"
        in (reference)
    )
    assert "| `port` | `BRIDGE_EMULATOR_PORT` | `int` (≥ 0, ≤ 65535) | `8000` |" in reference
