"""Bad input never crashes a worker: a corpus of malformed requests through both doors,
and a property test throwing arbitrary JSON and bytes at the JSON door. Every message
is answered (when it names a reply list) and dead-lettered, and good requests behind
them still complete."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from conftest import Bridge, MakeBridge, assert_no_late_replies
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from bridge.emulator.testing import wait_until
from bridge.errors import RequestRejected

LIMIT = 2048  # the route's max_payload_bytes in this module
# No shrinking: a failing example waits out a 30 s deadline, so shrinking would run for
# many minutes (past pytest-timeout, whose exception Hypothesis takes for a failure); the
# assertion messages name the offending input instead.
PROPERTY_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture],
    "phases": [Phase.explicit, Phase.reuse, Phase.generate],
}


@pytest.fixture(scope="module")
def small(make_bridge: MakeBridge) -> Bridge:
    changes = {"max_payload_bytes": LIMIT}
    return make_bridge(routes={name: changes for name in ("echo", "stream", "fail")})


def envelope_variants(reply_to: str) -> list[tuple[Any, str]]:
    """(payload, expected reason) — each a way an envelope can be wrong."""
    good: dict[str, Any] = {"route": "echo", "input": {"x": 1}, "reply_to": reply_to}
    bad_fields: list[tuple[str, Any]] = [
        ("input", "text"), ("input", 3), ("input", [1]), ("input", None), ("input", True),
        ("route", 7), ("route", ""), ("route", ["echo"]), ("mode", "fast"), ("mode", 1),
        ("policy", "high"), ("policy", {"ttl": -1}), ("policy", {"executionTimeout": "1s"}),
        ("policy", {"unknown": 1}), ("policy", {"lowPriority": "yes"}), ("webhook", "ftp://x"),
        ("webhook", 12), ("s3Config", "bucket"), ("deadline_s", -1), ("deadline_s", "soon"),
        ("deadline_s", 10**9), ("id", ""), ("id", "has space"), ("id", "x" * 300),
        ("id", 42), ("type", "delete"), ("extra", 1), ("endpoint_id", 5),
    ]  # fmt: skip
    cases: list[tuple[Any, str]] = []
    for name, value in bad_fields:
        cases.append(({**good, name: value}, "invalid_envelope"))
    cases += [
        ({k: v for k, v in good.items() if k != "input"}, "invalid_envelope"),
        ({k: v for k, v in good.items() if k != "route"}, "invalid_envelope"),
        ({**good, "mode": "webhook", "webhook": "https://x.example"}, "invalid_envelope"),
        ({**good, "route": "nope"}, "unknown_route"),
        ({**good, "route": None, "endpoint_id": "nowhere"}, "unknown_endpoint"),
        ({**good, "input": {"blob": "x" * LIMIT}}, "payload_too_large"),
        ({**good, "mode": "webhook"}, "webhook_unavailable"),
    ]
    return cases


RAW = [  # no readable reply list: dead-lettered only
    b"", b"{", b"}", b"[]", b"null", b"42", b'"text"', b"\xff\xfe", b"{'single': 1}",
    b'{"route": "echo", "input": {}, "reply_to": "has space"}', b"[" * 100_000,
    b'{"input": {"n": 1' + b"0" * 5000 + b"}}", b"\x00\x01\x02", b'{"route": "echo"',
    "¿qué?".encode("latin-1"), b'{"a": NaN}',
]  # fmt: skip


def send_raw(bridge: Bridge, payload: bytes | None) -> None:
    fields = {"payload": payload} if payload is not None else {"other": b"field"}
    bridge.redis.xadd(bridge.settings.requests_stream, fields)  # type: ignore[arg-type]


def test_malformed_corpus_through_the_json_door(small: Bridge) -> None:
    dlq = small.settings.dlq_stream
    before = small.redis.xlen(dlq)
    reply_to = f"{small.settings.key_prefix}:reply:corpus"
    cases = envelope_variants(reply_to)
    for payload, _ in cases:
        send_raw(small, json.dumps(payload).encode())
    for payload in [*RAW, None]:
        send_raw(small, payload)
    total = len(cases) + len(RAW) + 1
    assert total >= 50
    replies = small.replies(reply_to, timeout=5)
    while len(replies) < len(cases):
        more = small.replies(reply_to, timeout=30)
        assert more, f"{len(replies)} of {len(cases)} answered"
        replies += more
    assert [(r["status"], r["reason"]) for r in replies] == [
        ("REJECTED", reason) for _, reason in cases
    ]
    assert all(r["message"] for r in replies)
    wait_until(lambda: small.redis.xlen(dlq) - before == total, timeout=30)
    small.assert_no_late_reply(reply_to)  # one reply per case, none twice
    _, good = small.producer.send("echo", {"still": "alive"})
    assert small.result(good)["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"route": "echo", "input": "text"}, "invalid_arguments"),
        ({"route": "echo", "input": {}, "mode": "fast"}, "invalid_arguments"),
        ({"route": "nope", "input": {}}, "unknown_route"),
        ({"route": 5, "input": {}}, "invalid_arguments"),
        ({"route": ["echo"], "input": {}}, "invalid_arguments"),
        ({"input": {}}, "invalid_arguments"),
        ({"route": "echo", "input": {}, "policy": {"ttl": "x"}}, "invalid_arguments"),
        ({"route": "echo", "input": {}, "deadline_s": -3}, "invalid_arguments"),
        ({"route": "echo", "input": {}, "bogus": True}, "invalid_arguments"),
        ({"route": "echo", "input": {}, "request_id": 12}, "invalid_arguments"),
        ({"route": "echo", "input": {}, "reply_to": "has space"}, "invalid_arguments"),
        ({"route": "echo", "input": {"blob": "y" * LIMIT}}, "payload_too_large"),
    ],
)
def test_bad_celery_arguments_are_rejected(
    small: Bridge, kwargs: dict[str, Any], reason: str
) -> None:
    dlq = small.settings.dlq_stream
    before = small.redis.xlen(dlq)
    result = small.app.send_task("bridge.run", kwargs=kwargs)
    with pytest.raises(RequestRejected) as info:
        result.get(timeout=30)
    assert info.value.reason == reason
    wait_until(lambda: small.redis.xlen(dlq) == before + 1, timeout=30)
    [(_, letter)] = small.redis.xrevrange(dlq, count=1)
    assert letter[b"reason"] == reason.encode()


def test_bad_positional_arguments_are_rejected(small: Bridge) -> None:
    result = small.app.send_task("bridge.run", args=["echo", {}, "poll", *range(20)])
    with pytest.raises(RequestRejected, match="unexpected argument"):
        result.get(timeout=30)


# JSON as RFC 8259 has it: Python's json.dumps would write NaN and Infinity, which are not
# JSON, and a payload that does not parse cannot name its reply list (RAW covers those).
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


envelopes = st.lists(
    st.tuples(json_values, json_values, json_values, json_values), min_size=20, max_size=20
)


@settings(max_examples=3, **PROPERTY_SETTINGS)
@given(batch=envelopes)
def test_any_json_envelope_gets_exactly_one_reply(
    small: Bridge, batch: list[tuple[Any, Any, Any, Any]]
) -> None:
    """Twenty arbitrary envelopes at once; each gets its final reply (after its chunks,
    if any), and none gets a second one within the grace period that follows."""
    sent = []
    for route, job_input, mode, extra in batch:
        reply_to = f"{small.settings.key_prefix}:reply:prop:{uuid.uuid4().hex}"
        envelope = {"route": route, "input": job_input, "mode": mode, "reply_to": reply_to}
        if extra is not None:
            envelope["policy"] = extra
        send_raw(small, json.dumps(envelope).encode())
        sent.append((envelope, reply_to))
    for envelope, reply_to in sent:
        replies = small.replies(reply_to, timeout=30)
        assert replies, f"no reply to {envelope}"
        *chunks, final = replies
        assert final["type"] == "result", envelope
        assert {c["type"] for c in chunks} <= {"chunk"}, envelope
        assert final["status"] in {"REJECTED", "COMPLETED", "FAILED"}, envelope
    assert_no_late_replies(small.redis, small.settings, [reply_to for _, reply_to in sent])


def parses_as_a_request(payload: bytes) -> bool:
    try:
        decoded = json.loads(payload)
    except ValueError:
        return False
    return isinstance(decoded, dict) and decoded.get("input") is not None


@settings(max_examples=40, **PROPERTY_SETTINGS)
@given(payload=st.binary(max_size=300))
def test_any_bytes_are_dead_lettered_and_the_door_goes_on(small: Bridge, payload: bytes) -> None:
    assume(not parses_as_a_request(payload))  # anything else must be dead-lettered
    dlq = small.settings.dlq_stream
    before = small.redis.xlen(dlq)
    send_raw(small, payload)
    wait_until(lambda: small.redis.xlen(dlq) == before + 1, timeout=30)
    # the door must still answer a good request afterwards
    _, good = small.producer.send("echo", {"after": len(payload)})
    assert small.result(good)["status"] == "COMPLETED"
