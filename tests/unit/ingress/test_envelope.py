"""The JSON door's parser: envelopes, cancels, and every rejection — and it never raises."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.model import Refusal
from bridge.ingress.envelope import (
    CancelMessage,
    Envelope,
    parse_payload,
)

LIMIT = 64 * 1024


def parse(payload: Any, *, max_bytes: int = LIMIT) -> Envelope | CancelMessage | Refusal:
    raw = payload if isinstance(payload, bytes | str) or payload is None else json.dumps(payload)
    return parse_payload(raw, max_bytes=max_bytes)


def rejection(payload: Any, **kwargs: Any) -> Refusal:
    parsed = parse(payload, **kwargs)
    assert isinstance(parsed, Refusal), parsed
    return parsed


def test_full_envelope_is_parsed() -> None:
    parsed = parse(
        {
            "id": "req-1",
            "route": "sdxl",
            "input": {"prompt": "a cat", "steps": 30},
            "reply_to": "replies:{svc}/1",
            "mode": "stream",
            "policy": {"executionTimeout": 60_000, "ttl": 120_000, "lowPriority": False},
            "webhook": "https://example.com/hook",
            "s3Config": {"bucketName": "b"},
            "deadline_s": 90,
        }
    )
    assert isinstance(parsed, Envelope)
    assert (parsed.id, parsed.route, parsed.mode, parsed.reply_to) == (
        "req-1",
        "sdxl",
        "stream",
        "replies:{svc}/1",
    )
    assert parsed.input == {"prompt": "a cat", "steps": 30}
    assert parsed.policy is not None
    assert parsed.policy.executionTimeout == 60_000
    assert parsed.deadline_s == 90


def test_minimal_envelope_by_route_or_endpoint_id_from_bytes_or_str() -> None:
    by_route = parse(b'{"route": "echo", "input": {}}')
    by_endpoint = parse('{"endpoint_id": "abc123", "input": {"x": 1}}')
    assert isinstance(by_route, Envelope)
    assert by_route.route == "echo"
    assert by_route.id is None
    assert by_route.mode is None
    assert by_route.type == "request"
    assert isinstance(by_endpoint, Envelope)
    assert by_endpoint.endpoint_id == "abc123"


def test_cancel_message() -> None:
    parsed = parse({"type": "cancel", "id": "req-1"})
    assert parsed == CancelMessage(type="cancel", id="req-1")


def test_missing_payload_field() -> None:
    assert rejection(None).reason == "invalid_message"


def test_payload_too_large_is_refused_before_parsing() -> None:
    found = rejection(b"x" * 101, max_bytes=100)
    assert found.reason == "payload_too_large"
    assert "101 bytes" in found.message
    assert "100" in found.message
    exact = b'{"route": "e", "input": {}}'
    assert isinstance(parse(exact, max_bytes=len(exact)), Envelope)


def test_size_counts_utf8_bytes_of_a_str() -> None:
    assert rejection("é" * 60, max_bytes=100).reason == "payload_too_large"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"\xff{",
        b"not json",
        b"{'single': 'quotes'}",
        b"[" * 100_000,  # nesting deeper than the recursion limit
        b"1" * 5000,  # past Python's int digit limit: a ValueError, not a JSONDecodeError
        b'{"route": "echo", "input": {"n": ' + b"9" * 5000 + b"}}",
    ],
)
def test_invalid_json(raw: bytes) -> None:
    assert rejection(raw, max_bytes=10**6).reason == "invalid_json"


@pytest.mark.parametrize("payload", [[], [{"route": "echo"}], "a string", 42, None, True])
def test_payload_must_be_an_object(payload: Any) -> None:
    found = rejection(json.dumps(payload))
    assert found.reason == "invalid_envelope"
    assert "JSON object" in found.message


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"route": "echo"}, "input"),
        ({"route": "echo", "input": "text"}, "input"),
        ({"route": "echo", "input": [1]}, "input"),
        ({"input": {}}, "route"),
        ({"route": "", "input": {}}, "route"),
        ({"route": "echo", "input": {}, "mode": "carrier-pigeon"}, "mode"),
        ({"route": "echo", "input": {}, "mode": "webhook", "webhook": "https://x.io"}, "webhook"),
        ({"route": "echo", "input": {}, "webhook": "ftp://x.io"}, "webhook"),
        ({"route": "echo", "input": {}, "deadline_s": 0}, "deadline_s"),
        ({"route": "echo", "input": {}, "deadline_s": 8 * 86400}, "deadline_s"),
        ({"route": "echo", "input": {}, "policy": {"ttl": 0}}, "policy.ttl"),
        ({"route": "echo", "input": {}, "policy": {"priority": 1}}, "policy.priority"),
        ({"route": "echo", "input": {}, "colour": "red"}, "colour"),
        ({"route": "echo", "input": {}, "id": "has space"}, "id"),
        ({"route": "echo", "input": {}, "reply_to": "bad key!"}, "reply_to"),
        ({"route": "echo", "input": {}, "type": "other"}, "type"),
        ({"type": "cancel"}, "id"),
        ({"type": "cancel", "id": "r1", "route": "echo"}, "route"),
    ],
)
def test_invalid_envelope_names_the_field(payload: dict[str, Any], field: str) -> None:
    found = rejection(payload)
    assert found.reason == "invalid_envelope"
    assert field in found.message


def test_id_and_reply_to_are_kept_when_readable() -> None:
    found = rejection({"id": "r-9", "reply_to": "replies:9", "route": "echo", "input": "x"})
    assert (found.request_id, found.reply_to) == ("r-9", "replies:9")


def test_unreadable_id_and_reply_to_are_dropped() -> None:
    found = rejection({"id": "a b", "reply_to": ["no"], "route": "echo", "input": "x"})
    assert (found.request_id, found.reply_to) == (None, None)
    found = rejection({"id": 7, "reply_to": "x" * 300, "input": {}})
    assert (found.request_id, found.reply_to) == (None, None)


def test_messages_never_echo_the_offending_values() -> None:
    found = rejection({"route": "echo", "input": "sk-secret-value", "deadline_s": "sk-other"})
    assert "sk-secret-value" not in found.message
    assert "sk-other" not in found.message


def test_many_errors_are_summarised() -> None:
    payload = {f"extra{k}": k for k in range(8)} | {"input": 1}
    found = rejection(payload)
    assert found.message.count(";") == 5
    assert found.message.endswith("more")


# -- never raises ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
envelope_keys = st.sampled_from(
    ["type", "id", "route", "endpoint_id", "input", "reply_to", "mode", "policy", "webhook",
     "s3Config", "deadline_s", "cancel", "request"]
)  # fmt: skip
envelope_like = st.dictionaries(envelope_keys, json_values | st.sampled_from(["cancel"]))
Parsed = (Envelope, CancelMessage, Refusal)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_payload(raw, max_bytes=256), Parsed)


# (st.text() with this alphabet almost never yields a surrogate)
@given(st.lists(st.characters() | st.characters(categories=["Cs"]), max_size=256).map("".join))
def test_arbitrary_text_with_lone_surrogates_never_raises(raw: str) -> None:
    assert isinstance(parse_payload(raw, max_bytes=1024), Parsed)


def test_lone_surrogates_in_a_str_payload() -> None:
    assert rejection("\ud800").reason == "invalid_json"
    assert rejection('{"route": "\ud800", "input": {}}').reason == "invalid_envelope"
    parsed = parse('{"route": "echo", "input": {"\ud800": "\udfff"}}')
    assert isinstance(parsed, Envelope)
    assert parsed.input == {"\ud800": "\udfff"}


@given(json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    assert isinstance(parse_payload(json.dumps(value), max_bytes=LIMIT), Parsed)


@given(envelope_like)
def test_envelope_shaped_objects_never_raise(value: dict[str, Any]) -> None:
    parsed = parse_payload(json.dumps(value).encode(), max_bytes=LIMIT)
    assert isinstance(parsed, Parsed)
    if isinstance(parsed, Envelope):
        assert parsed.input == value["input"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "[1, NaN]"])
def test_numbers_json_cannot_carry_are_refused_and_answered(value: str) -> None:
    raw = f'{{"id": "r1", "route": "r", "input": {{"x": {value}}}, "reply_to": "replies:1"}}'
    refused = rejection(raw)
    assert (refused.reason, refused.request_id, refused.reply_to) == (
        "invalid_input", "r1", "replies:1",
    )  # fmt: skip
    assert "NaN or Infinity" in refused.message


def test_nesting_past_the_limit_is_refused_before_validation() -> None:
    def nested(depth: int) -> str:
        return '{"a":' * depth + "1" + "}" * depth

    ok = f'{{"route": "r", "input": {nested(64)}}}'
    assert isinstance(parse_payload(ok, max_bytes=LIMIT, max_depth=64), Envelope)
    deep = f'{{"route": "r", "input": {nested(65)}}}'
    refused = parse_payload(deep, max_bytes=LIMIT, max_depth=64)
    assert isinstance(refused, Refusal)
    assert (refused.reason, refused.message) == (
        "invalid_input", "the envelope holds nesting deeper than 64 levels",
    )  # fmt: skip
    # Far past Python's recursion limit: still a clear refusal, never a RecursionError.
    huge = '{"route": "r", "input": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert rejection(huge, max_bytes=1_000_000).reason in (
        "invalid_json", "invalid_input",
    )  # fmt: skip


def test_invalid_utf8_is_invalid_json() -> None:
    assert rejection(b'{"route": "r", "input": {"t": "\xff\xfe"}}').reason == "invalid_json"
