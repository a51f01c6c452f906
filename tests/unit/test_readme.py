"""The README's bridge section stays true to the code: the envelope's JSON Schema is the
generated one, and its redis-cli examples are envelopes the JSON door accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bridge.ingress.envelope import CancelMessage, Envelope, parse_payload
from bridge.worker.model import FINAL_STATES

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
