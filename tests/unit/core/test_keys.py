"""The one key schema: every key is built in bridge.core.keys, documented from there, and
a producer cannot point its replies at a key the bridge or Celery owns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge import docs
from bridge.core.keys import Keys, keys_for, reply_target_problem, schema
from bridge.settings import BridgeSettings, RouteConfig

PACKAGE = Path(docs.__file__).resolve().parent


def test_the_docs_show_the_key_schema_from_its_one_source() -> None:
    page = docs.REDIS.read_text(encoding="utf-8")
    assert docs.current(page, docs.KEYS_BEGIN, docs.KEYS_END) == docs.key_schema(), (
        "docs/redis.md's key schema is stale: run `python -m bridge.docs`"
    )


def test_no_module_spells_a_bridge_key_itself() -> None:
    # A key layout written in many files drifts: only keys.py (and the Lua of the
    # leases, which builds keys from the prefix it is given) may spell these.
    spelled = re.compile(r'f"\{[^}]*prefix\}:(req|inflight|owner|breaker|budget|health|'
                         r'stats|task|reply|cancel|wake|purge|door)')  # fmt: skip
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "keys.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if spelled.search(line)
    ]
    assert offenders == []


def test_every_documented_key_is_distinct_and_prefixed() -> None:
    keys = Keys("p", "p:requests", "p:dlq")
    patterns = [spec.pattern for spec in schema(keys)]
    assert len(patterns) == len(set(patterns))
    assert all(p.startswith("p:") for p in patterns)


SETTINGS = BridgeSettings(
    key_prefix="bridge", default_queue="celery-default",
    routes={"sdxl": RouteConfig(endpoint_id="e", queue="gpu")},
)  # fmt: skip


@pytest.mark.parametrize(
    "target",
    ["bridge:requests", "bridge:dlq", "bridge:req:x", "bridge:inflight:sdxl",
     "gpu", "celery-default", "celery", "celery-task-meta-123", "_kombu.binding.gpu",
     "unacked", "gpu\x06\x163"],
)  # fmt: skip
def test_keys_the_bridge_or_celery_own_are_no_reply_target(target: str) -> None:
    assert reply_target_problem(target, SETTINGS) is not None


@pytest.mark.parametrize("target", ["replies:svc:1", "bridge:reply:abc", "my-list"])
def test_other_keys_are_reply_targets(target: str) -> None:
    assert reply_target_problem(target, SETTINGS) is None


def test_reply_prefixes_restrict_targets_and_a_route_may_override_them() -> None:
    settings = SETTINGS.model_copy(update={"reply_prefixes": ["replies:"]})
    assert reply_target_problem("replies:1", settings) is None
    assert reply_target_problem("bridge:reply:1", settings) is None  # the CLI's own
    assert reply_target_problem("other:1", settings) is not None
    route = RouteConfig(endpoint_id="e", reply_prefixes=["gpu-replies:"])
    assert reply_target_problem("gpu-replies:1", settings, route) is None
    assert reply_target_problem("replies:1", settings, route) is not None


def test_keys_follow_the_settings() -> None:
    keys = keys_for(BridgeSettings(key_prefix="k", requests_stream="in", dlq_stream="dead"))
    assert (keys.request("1"), keys.requests_stream, keys.dlq_stream) == ("k:req:1", "in", "dead")
    assert keys.owns("in")
    assert keys.owns("k:owners")
    assert not keys.owns("k:reply:1")
