"""The README and docs/ stay true to the code: the envelope's JSON Schema, the configuration
reference and the key schema are the generated ones, and the examples are envelopes the
JSON door accepts. (tests/integration/test_readme_snippets.py runs their snippets.)"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bridge import docs
from bridge.core.model import FINAL_STATES
from bridge.emulator.settings import EmulatorSettings
from bridge.ingress.envelope import CancelMessage, Envelope, parse_payload
from bridge.settings import BridgeSettings, RouteConfig

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ENVELOPE = ROOT / "docs" / "envelope.md"
MARKER = "<!-- envelope-schema: generated; tests/unit/test_readme.py fails when it differs -->"


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def envelope_page() -> str:
    return ENVELOPE.read_text(encoding="utf-8")


def test_schema_block_is_the_generated_schema(envelope_page: str) -> None:
    block = re.search(re.escape(MARKER) + r"\n```json\n(.*?)\n```", envelope_page, re.DOTALL)
    assert block is not None, "the envelope schema block is missing from docs/envelope.md"
    generated = json.dumps(Envelope.model_json_schema(), indent=2)
    assert block.group(1) == generated, (
        "docs/envelope.md's envelope schema is stale: paste "
        "json.dumps(Envelope.model_json_schema(), indent=2)"
    )


def test_redis_cli_examples_are_accepted_envelopes(readme: str) -> None:
    payloads = re.findall(r"XADD bridge:requests '\*' payload \\?\s*'(\{.*?\})'", readme)
    assert len(payloads) == 2
    request, cancel = (parse_payload(p, max_bytes=10_000) for p in payloads)
    assert isinstance(request, Envelope)
    assert request.reply_to == "replies:req-1"
    assert isinstance(cancel, CancelMessage)


def test_envelope_page_examples_are_accepted_envelopes(envelope_page: str) -> None:
    section = envelope_page.split("## JSON door", 1)[1].split("\n## ", 1)[0]
    lines = re.search(r"```json\n(.*?)\n```", section, re.DOTALL)
    assert lines is not None
    request, cancel = (parse_payload(p, max_bytes=10_000) for p in lines.group(1).splitlines())
    assert isinstance(request, Envelope)
    assert isinstance(cancel, CancelMessage)


def test_reply_table_names_every_final_status(envelope_page: str) -> None:
    section = envelope_page.split("## Replies", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE))
    assert listed == FINAL_STATES


def test_configuration_reference_is_the_generated_one() -> None:
    block = docs.current(docs.CONFIGURATION.read_text(encoding="utf-8"))
    assert block is not None, "the configuration reference block is missing from its page"
    assert block == docs.reference(), (
        "docs/configuration.md's reference is stale: run `.venv/bin/python -m bridge.docs`"
    )


def test_key_schema_is_the_generated_one() -> None:
    text = docs.REDIS.read_text(encoding="utf-8")
    block = docs.current(text, docs.KEYS_BEGIN, docs.KEYS_END)
    assert block is not None, "the key schema block is missing from docs/redis.md"
    assert block == docs.key_schema(), (
        "docs/redis.md's key schema is stale: run `.venv/bin/python -m bridge.docs`"
    )


def test_generator_check_passes() -> None:
    assert docs.main(["--check"]) == 0


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


def test_polling_loops_stop_on_every_final_status() -> None:
    """The SDK's documented examples poll ``while True`` until COMPLETED or FAILED, so a job
    that ends CANCELLED or TIMED_OUT is polled forever; ours list every final status."""
    from bridge.runpod import FINAL_STATES as JOB_FINAL_STATES

    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    loops = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r'status\["status"\] in \[([^\]]*)\]', text):
            listed = set(re.findall(r'"([A-Z_]+)"', match.group(1)))
            loops.append((page.name, listed))
    assert len(loops) >= 2, "the client guide's polling examples are gone"
    for name, listed in loops:
        assert listed == JOB_FINAL_STATES, f"{name}: a loop stops only on {sorted(listed)}"


def test_every_metric_the_docs_name_is_exported() -> None:
    from prometheus_client import REGISTRY

    from bridge.core import metrics  # noqa: F401  # registers the worker's metrics
    from bridge.core.fleet_metrics import exported_names

    exported = {m.name for m in REGISTRY.collect()} | exported_names()
    exported |= {f"{name}_total" for name in exported}  # counters are collected without it
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    named = set()
    for page in pages:
        text = page.read_text(encoding="utf-8")
        labelled = re.findall(r"\b(bridge_[a-z0-9_]+)\{", text)  # a metric with its labels
        plain = re.findall(r"`(bridge_[a-z0-9_]+_(?:total|seconds))`", text)
        named |= {(page.name, name) for name in [*labelled, *plain]}
    assert len(named) >= 10, "the docs' metric names are not found any more"
    unknown = sorted(f"{page}: {name}" for page, name in named if name not in exported)
    assert unknown == [], f"the docs name metrics the worker does not export: {unknown}"


def test_the_runpod_quickstart_writes_a_route_the_worker_accepts(
    readme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart against RunPod cannot run here (it needs an account); its routes
    file and key file are what the settings accept, with the key read from the file."""
    section = readme.split("## Quickstart: real RunPod", 1)[1].split("\n## ", 1)[0]
    heredoc = re.search(r"cat > bridge\.toml <<EOF\n(.*?)\nEOF\n", section, re.DOTALL)
    key = re.search(r"printf '%s' '([^']+)' > runpod_api_key", section)
    assert heredoc is not None, "the quickstart's routes file is not found"
    assert key is not None, "the quickstart's key file is not found"
    (tmp_path / "runpod_api_key").write_text(key.group(1), encoding="utf-8")
    config = tmp_path / "bridge.toml"
    config.write_text(heredoc.group(1).replace("$PWD", str(tmp_path)), encoding="utf-8")
    for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    settings = BridgeSettings.load(config)
    assert list(settings.routes) == ["sdxl"]
    route = settings.routes["sdxl"]
    assert route.base_url.startswith("https://api.runpod.ai/")
    assert route.api_key().get_secret_value() == key.group(1)
