"""Poison pills and hostile producers (issues 11 and 14): no message can stop a door, harm
a key the bridge or Celery owns, or take over another request's id. Two live workers keep
serving good requests while the pills go by; each pill is answered or dead-lettered once;
the request stream keeps no more than what is still being handled."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import Bridge, MakeBridge, start_worker, stop_processes, wait_ready

from bridge.emulator.testing import EmulatorHandle, wait_until
from bridge.errors import RequestRejected

GOOD = 200


@pytest.fixture(scope="module")
def pair(make_bridge: MakeBridge) -> Iterator[Bridge]:
    """One bridge served by two live worker processes."""
    bridge = make_bridge()
    second = start_worker(bridge.env, bridge.log, celery_args=("-n", f"2-{bridge.node}"))
    bridge.procs.append(second)
    wait_ready(bridge.app, second, bridge.log, node=f"2-{bridge.node}")
    yield bridge
    stop_processes([second])


def xadd(bridge: Bridge, payload: bytes | str) -> None:
    bridge.redis.xadd(bridge.settings.requests_stream, {"payload": payload})


def letters(bridge: Bridge) -> list[dict[bytes, bytes]]:
    return [f for _, f in bridge.redis.xrange(bridge.settings.dlq_stream)]


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_poison_pills_among_good_requests_never_stop_two_workers(pair: Bridge) -> None:
    prefix = pair.settings.key_prefix
    tag = uuid.uuid4().hex[:6]
    pills: dict[str, bytes] = {
        "deep": json.dumps({"id": f"deep-{tag}", "route": "echo", "reply_to":
                            f"{prefix}:reply:deep-{tag}"})[:-1].encode()
        + b',"input":' + nested(600).encode() + b"}",
        "nan": f'{{"id":"nan-{tag}","route":"echo","input":{{"x":NaN}},'
        f'"reply_to":"{prefix}:reply:nan-{tag}"}}'.encode(),
        "huge-number": f'{{"id":"big-{tag}","route":"echo","input":{{"x":1e999}},'
        f'"reply_to":"{prefix}:reply:big-{tag}"}}'.encode(),
        "20 MB": b'{"route":"echo","input":{"blob":"' + b"x" * (20 * 1024 * 1024) + b'"}}',
        "invalid UTF-8": b'{"route":"echo","input":{"t":"\xff\xfe"}}',
    }  # fmt: skip
    before = len(letters(pair))
    sent: list[str] = []
    for k in range(GOOD):
        if k % 40 == 0 and pills:
            xadd(pair, pills.pop(next(iter(pills))))
        sent.append(pair.producer.send("echo", {"k": k})[1])
    results = [pair.result(reply_to, timeout=60) for reply_to in sent]
    assert [r["status"] for r in results] == ["COMPLETED"] * GOOD
    # Each pill dead-lettered exactly once (after a grace period for late duplicates),
    # the ones that named a reply list answered there, once.
    wait_until(lambda: len(letters(pair)) - before >= 5, timeout=30)
    time.sleep(2)
    new = letters(pair)[before:]
    reasons = sorted(f[b"reason"].decode() for f in new)
    assert reasons == sorted(
        ["invalid_input", "invalid_input", "invalid_input", "payload_too_large", "invalid_json"]
    )
    for name in ("deep", "nan", "big"):
        replies = pair.replies(f"{prefix}:reply:{name}-{tag}", timeout=5)
        assert [(r["status"], r["reason"]) for r in replies] == [("REJECTED", "invalid_input")]
    big = next(f for f in new if f[b"reason"] == b"payload_too_large")
    assert int(big[b"payload_bytes"]) > 20 * 1024 * 1024
    assert len(big[b"payload"]) <= 64 * 1024  # a shortened copy, not 20 MB in the DLQ
    # Both workers are alive and the stream holds nothing handled.
    assert all(p.poll() is None for p in pair.procs)
    stream, group = pair.settings.requests_stream, pair.settings.consumer_group
    wait_until(lambda: pair.redis.xpending(stream, group)["pending"] == 0, timeout=30)
    assert pair.redis.xlen(stream) == 0


def test_the_request_stream_holds_only_what_is_being_handled(pair: Bridge) -> None:
    stream, group = pair.settings.requests_stream, pair.settings.consumer_group
    sent = [pair.producer.send("echo", {"k": k})[1] for k in range(2000)]
    for reply_to in sent:
        assert pair.result(reply_to, timeout=120)["status"] == "COMPLETED"
    margin = 100  # one batch read but not yet acknowledged
    length, pending = pair.redis.xlen(stream), pair.redis.xpending(stream, group)["pending"]
    assert length <= pending + margin, (length, pending)
    wait_until(lambda: pair.redis.xlen(stream) == 0, timeout=30)


@pytest.mark.parametrize("target", ["requests", "dlq", "queue", "celery-meta", "hash"])
def test_a_reply_to_naming_a_key_we_own_is_refused_and_never_written(
    pair: Bridge, target: str
) -> None:
    settings = pair.settings
    names = {
        "requests": settings.requests_stream,
        "dlq": settings.dlq_stream,
        "queue": settings.default_queue,
        "celery-meta": f"celery-task-meta-{uuid.uuid4()}",
        "hash": f"{settings.key_prefix}:breaker:echo",
    }
    key = names[target]
    before = (pair.redis.type(key), pair.redis.dump(key), pair.redis.ttl(key))
    count = len(letters(pair))
    request_id = f"bad-reply-{uuid.uuid4().hex[:8]}"
    envelope = {"id": request_id, "route": "nope", "input": {}, "reply_to": key}
    xadd(pair, json.dumps(envelope))
    good = [pair.producer.send("echo", {"after": k})[1] for k in range(20)]
    assert [pair.result(r)["status"] for r in good] == ["COMPLETED"] * 20
    wait_until(lambda: len(letters(pair)) > count, timeout=30)
    time.sleep(2)  # a grace period: no second dead letter, no retry loop
    mine = [f for f in letters(pair)[count:] if f[b"request_id"] == request_id.encode()]
    assert [f[b"reason"] for f in mine] == [b"bad_reply_to"]
    if target in ("requests", "dlq"):  # they change by design: never a list pushed there
        assert pair.redis.type(key) == b"stream"
    else:
        assert (pair.redis.type(key), pair.redis.dump(key), pair.redis.ttl(key)) == before


def test_a_taken_id_is_answered_duplicate_id_and_the_holder_is_untouched(
    pair: Bridge, emulator: EmulatorHandle
) -> None:
    prefix = pair.settings.key_prefix
    request_id = f"order-{uuid.uuid4().hex[:8]}"
    first = pair.producer.send("echo", {"sleep_ms": 300, "who": "owner"}, request_id=request_id)
    # Two workers read the stream: the first request to be recorded holds the id.
    wait_until(lambda: pair.redis.exists(f"{prefix}:req:{request_id}") == 1, timeout=30)
    squatter = f"{prefix}:reply:squatter-{request_id}"
    pair.producer.send("echo", {"who": "squatter"}, request_id=request_id, reply_to=squatter)
    refused = pair.result(squatter)
    assert (refused["status"], refused["reason"]) == ("REJECTED", "duplicate_id")
    owner = pair.replies(first[1])
    assert [(r["status"], r["output"]) for r in owner] == [
        ("COMPLETED", {"sleep_ms": 300, "who": "owner"})
    ]
    # The same request sent again (a producer's retry) is not refused: it is the same one.
    pair.producer.send("echo", {"sleep_ms": 300, "who": "owner"}, request_id=request_id,
                       reply_to=first[1])  # fmt: skip
    time.sleep(2)
    assert pair.redis.llen(first[1]) == 0


def test_dlq_replay_never_touches_another_requests_record(pair: Bridge) -> None:
    prefix = pair.settings.key_prefix
    request_id = f"order-{uuid.uuid4().hex[:8]}"
    count = len(letters(pair))
    xadd(pair, json.dumps({"id": request_id, "route": "nope", "input": {}}))
    wait_until(lambda: len(letters(pair)) > count, timeout=30)
    _, reply_to = pair.producer.send("echo", {"real": True}, request_id=request_id,
                                     reply_to=f"{prefix}:reply:{request_id}")  # fmt: skip
    assert pair.result(reply_to)["status"] == "COMPLETED"
    entry = next(e for e, f in pair.redis.xrange(pair.settings.dlq_stream)
                 if f[b"request_id"] == request_id.encode())  # fmt: skip
    shown = subprocess.run(
        [sys.executable, "-m", "bridge", "dlq", "replay", entry.decode()],
        env=pair.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    record = pair.redis.hgetall(f"{prefix}:req:{request_id}")
    assert record[b"state"] == b"final"  # the real request's record is still there
    assert json.loads(record[b"final"])["status"] == "COMPLETED"


def test_the_celery_door_refuses_inputs_that_cannot_travel(pair: Bridge) -> None:
    for bad in ({"x": float("nan")}, {"x": float("inf")}):
        result = pair.run("echo", bad)
        with pytest.raises(RequestRejected, match="invalid_input"):
            result.get(timeout=30)


def test_a_producer_with_only_xadd_and_its_replies_can_use_the_bridge(
    pair: Bridge,
) -> None:
    """The Redis ACL recipe of docs/security.md, applied: the producer may
    XADD to the request stream and read its own reply lists, nothing else."""
    user, password = f"producer-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    stream = pair.settings.requests_stream
    rules = [
        "on", f">{password}", "resetkeys", "resetchannels",
        f"~{stream}", "~replies:*", "-@all", "+xadd", "+blpop", "+lpop", "+lrange", "+llen",
        "+ping",
    ]  # fmt: skip
    pair.redis.acl_setuser(user, enabled=True, reset=True)
    pair.redis.execute_command("ACL", "SETUSER", user, *rules)
    url = pair.settings.redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
    producer = redis.Redis.from_url(url)
    try:
        reply_to = f"replies:{uuid.uuid4().hex}"
        envelope: dict[str, Any] = {"route": "echo", "input": {"acl": 1}, "reply_to": reply_to}
        producer.xadd(stream, {"payload": json.dumps(envelope)})
        _, raw = producer.blpop([reply_to], timeout=30) or (None, b"{}")
        assert json.loads(raw)["status"] == "COMPLETED"
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.hgetall(f"{pair.settings.key_prefix}:req:anything")
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.xrange(pair.settings.dlq_stream)
    finally:
        producer.close()
        pair.redis.acl_deluser(user)
