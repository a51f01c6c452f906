"""Permanent endpoint errors end a request at once, with its reason: a key revoked while
jobs run (401 on every status check), a job that vanishes (404). Each request gets exactly
one FAILED/EXPIRED reply, one dead letter, and the worker goes on serving other routes."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import Bridge, MakeBridge

from bridge.emulator.settings import EndpointConfig
from bridge.emulator.testing import EmulatorHandle, wait_until

REQUESTS = 5
DEADLINE_S = 60.0  # the bound with default settings


def _submitted(bridge: Bridge, request_ids: list[str]) -> bool:
    return all(bridge.producer.job_id(r) for r in request_ids)


def _dead_letters(bridge: Bridge, reason: str) -> list[dict[bytes, bytes]]:
    entries = bridge.redis.xrange(bridge.settings.dlq_stream)
    return [f for _, f in entries if f[b"reason"] == reason.encode()]


def test_a_revoked_key_ends_every_request_unauthorized_and_others_go_on(
    make_bridge: MakeBridge, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    key = emulator.add_key()
    key_file = tmp_path / "key"
    key_file.write_text(key)
    bridge = make_bridge(routes={"keyed": {"api_key_file": str(key_file),
                                           "default_emulator_key": False}})  # fmt: skip
    sent = [bridge.producer.send("keyed", {"sleep_ms": 30_000, "k": k}) for k in range(REQUESTS)]
    wait_until(lambda: _submitted(bridge, [r for r, _ in sent]), timeout=30)
    emulator.revoke_key(key)  # as a user would in RunPod's console
    revoked_at = time.monotonic()
    # The worker keeps serving the routes whose key still works.
    _, other = bridge.producer.send("echo", {"still": "served"})
    assert bridge.result(other)["status"] == "COMPLETED"
    replies = [bridge.replies(reply_to, timeout=DEADLINE_S) for _, reply_to in sent]
    assert time.monotonic() - revoked_at < DEADLINE_S
    for got in replies:
        assert [(r["status"], r.get("reason")) for r in got] == [("FAILED", "unauthorized")]
    # Exactly one reply and one dead letter each, after a grace period for duplicates.
    time.sleep(2)
    assert all(bridge.redis.llen(reply_to) == 0 for _, reply_to in sent)
    letters = _dead_letters(bridge, "unauthorized")
    assert sorted(f[b"request_id"].decode() for f in letters) == sorted(r for r, _ in sent)


def test_a_vanished_job_ends_expired_job_lost(
    make_bridge: MakeBridge, emulator: EmulatorHandle
) -> None:
    config = EndpointConfig(id="vanishing", templateId="echo", workersMax=20,
                            scalerType="REQUEST_COUNT", scalerValue=1)  # fmt: skip
    emulator.call(emulator.engine.add_endpoint, config)
    # Plain status checks (no held ones): the 404 is seen within a poll, not a hold.
    bridge = make_bridge(routes={"vanishing": {"endpoint_id": "vanishing", "long_poll_below": 0}})
    sent = [bridge.producer.send("vanishing", {"sleep_ms": 30_000}) for _ in range(REQUESTS)]
    wait_until(lambda: _submitted(bridge, [r for r, _ in sent]), timeout=30)
    emulator.fail_ops("vanishing", {"status": 404, "status-sync": 404, "stream": 404})
    started = time.monotonic()
    replies = [bridge.replies(reply_to, timeout=DEADLINE_S) for _, reply_to in sent]
    assert time.monotonic() - started < DEADLINE_S
    for got in replies:
        assert [(r["status"], r.get("reason")) for r in got] == [("EXPIRED", "job_lost")]
    time.sleep(2)
    assert all(bridge.redis.llen(reply_to) == 0 for _, reply_to in sent)
    letters = _dead_letters(bridge, "job_lost")
    assert sorted(f[b"request_id"].decode() for f in letters) == sorted(r for r, _ in sent)
    assert emulator.fault_counts("vanishing").get("fail_op", 0) >= REQUESTS
