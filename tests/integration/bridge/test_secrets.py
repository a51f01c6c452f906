"""Secrets stay secret: a full run with a distinctive API key (and a wrong one for a
second route), then everything it produced is searched for both keys: the worker's
log, the emulator's log, replies, the ledger, dead letters and Celery results."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
import redis
from bridgekit import cleanup, make_setup
from conftest import start_worker, stop_processes, wait_ready

from bridge.emulator.testing import running_emulator, wait_until

KEY = f"sk-live-{uuid.uuid4().hex}"
WRONG = f"sk-wrong-{uuid.uuid4().hex}"


def everything_in(client: redis.Redis, patterns: list[str]) -> str:
    """Every value stored under these key patterns, as text."""
    out: list[str] = []
    for pattern in patterns:
        for key in client.scan_iter(pattern):
            kind = client.type(key).decode()
            value: object
            if kind == "string":
                value = client.get(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "stream":
                value = client.xrange(key)
            elif kind == "set":
                value = client.smembers(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1)
            else:
                value = kind
            out.append(f"{key!r}: {value!r}")
    return "\n".join(out)


def test_keys_never_appear_anywhere(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with running_emulator(api_keys=KEY) as emu:
        setup = make_setup(emu, redis_url, tmp_path / "worker.log")
        routes = json.loads(setup.env["BRIDGE_ROUTES"])
        routes["stream"] = {**routes["echo"], "endpoint_id": "stream", "mode": "stream"}
        routes["wrong"] = {**routes["echo"], "api_key_env": "BRIDGE_TEST_WRONG_KEY",
                           "default_emulator_key": False}  # fmt: skip
        setup.env.update(
            BRIDGE_ROUTES=json.dumps(routes), RUNPOD_API_KEY=KEY, BRIDGE_TEST_WRONG_KEY=WRONG
        )
        worker = start_worker(setup.env, setup.log, "--loglevel", "DEBUG")
        try:
            wait_ready(setup.app, worker, setup.log)
            results = []
            for route, job_input in [
                ("echo", {"prompt": "hello"}),
                ("stream", {"n": 3, "interval_ms": 1}),
                ("wrong", {"prompt": "401 please"}),
            ]:
                _, reply_to = setup.producer.send(route, job_input)
                results.append(list(setup.producer.replies(reply_to, timeout=60)))
            celery = setup.app.send_task(
                "bridge.run", kwargs={"route": "echo", "input": {"via": "celery"}}
            )
            assert celery.get(timeout=60) == {"via": "celery"}
            cancelled_id, cancelled_to = setup.producer.send("echo", {"sleep_ms": 30_000})
            wait_until(lambda: setup.states([cancelled_id]) == {b"submitted": 1}, timeout=30)
            setup.producer.cancel(cancelled_id)
            results.append(list(setup.producer.replies(cancelled_to, timeout=60)))
            wait_until(lambda: setup.redis.xlen(setup.settings.dlq_stream) >= 1, timeout=30)
            stored = everything_in(
                setup.redis, [f"{setup.settings.key_prefix}*", f"celery-task-meta-{celery.id}"]
            )
        finally:
            stop_processes([worker])
            cleanup(setup)
    statuses = [r[-1]["status"] for r in results]
    assert statuses == ["COMPLETED", "COMPLETED", "FAILED", "CANCELLED"]
    refused = results[2][-1]  # the wrong key: the emulator's 401, and why, without the key
    assert refused["reason"] == "unauthorized", refused
    assert "401" in refused["message"], refused
    assert "invalid API key" in refused["message"], refused
    produced = "\n".join([
        setup.log.read_text(errors="replace"),
        caplog.text,
        json.dumps(results),
        stored,
    ])  # fmt: skip
    assert "unauthorized" in stored  # the dead letter is part of what we searched
    assert len(produced) > 10_000
    for secret in (KEY, WRONG):
        assert secret not in produced
        assert secret[8:24] not in produced  # nor a recognisable part of it
