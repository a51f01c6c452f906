"""Mode ``webhook``: the endpoint's call wakes the tracker; a forged call changes nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from conftest import close_app, start_worker, stop_processes, wait_ready

from bridge.emulator.testing import EmulatorHandle, wait_until
from bridge.producer import JsonDoorClient
from bridge.settings import BridgeSettings
from bridge.worker.app import create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebhookBridge:
    def __init__(self, settings: BridgeSettings, producer: JsonDoorClient, receiver: str):
        self.settings = settings
        self.producer = producer
        self.receiver = receiver

    def state(self, request_id: str) -> dict[bytes, bytes]:
        return self.producer.redis.hgetall(f"{self.settings.key_prefix}:req:{request_id}")


@pytest.fixture(scope="module")
def hooked(
    emulator: EmulatorHandle, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookBridge]:
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    receiver = f"http://127.0.0.1:{port}"
    overrides = {
        "redis_url": redis_url,
        "emulator_url": emulator.url,
        "key_prefix": f"wh-{tag}",
        "requests_stream": f"wh-{tag}:requests",
        "dlq_stream": f"wh-{tag}:dlq",
        "default_queue": f"wh-{tag}",
        "webhook_url": receiver,
        "webhook_port": str(port),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RUNPOD_"))}
    env.update({f"BRIDGE_{k.upper()}": v for k, v in overrides.items()})
    routes = BridgeSettings.load(**overrides).routes
    for route in routes.values():
        route.queue = f"wh-{tag}"
        route.webhook_safety_poll_s = 60.0  # so only the webhook can end a job quickly
    env["BRIDGE_ROUTES"] = json.dumps({n: r.model_dump(mode="json") for n, r in routes.items()})
    settings = BridgeSettings.load(**overrides, routes=routes)
    log = Path(tmp_path_factory.mktemp("webhook")) / "worker.log"
    procs = [start_worker(env, log)]
    with log.open("ab") as out:
        procs.append(
            subprocess.Popen([sys.executable, "-m", "bridge", "webhooks"], env=env,
                             stdout=out, stderr=subprocess.STDOUT)
        )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    app = create_app(settings)
    try:
        wait_ready(app, procs[0], log)
        wait_until(lambda: _answers(f"{receiver}/healthz"), timeout=20)
        yield WebhookBridge(settings, JsonDoorClient(settings, client), receiver)
    finally:
        stop_processes(procs)
        close_app(app)
        for key in client.scan_iter(f"wh-{tag}*"):
            client.delete(key)
        client.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


def test_webhook_wakes_the_tracker_long_before_the_safety_poll(
    hooked: WebhookBridge, emulator: EmulatorHandle
) -> None:
    """The safety poll is 60 s away and the reply is awaited for at most 30 s: only the
    endpoint's webhook (counted by the emulator) can have ended the request."""
    before = emulator.stats("echo")
    _, reply_to = hooked.producer.send("echo", {"sleep_ms": 300, "v": 1}, mode="webhook")
    results = list(hooked.producer.replies(reply_to, timeout=30))
    assert results, "no reply within 30 s"
    assert (results[-1]["status"], results[-1]["output"]) == (
        "COMPLETED",
        {"sleep_ms": 300, "v": 1},
    )
    wait_until(lambda: emulator.stats("echo")["webhooks_sent"] > before["webhooks_sent"])
    after = emulator.stats("echo")
    assert after["webhooks_sent"] == before["webhooks_sent"] + 1
    assert after["webhooks_failed"] == before["webhooks_failed"]


def test_forged_webhooks_cannot_inject_output_or_end_early(
    hooked: WebhookBridge, emulator: EmulatorHandle
) -> None:
    request_id, reply_to = hooked.producer.send("echo", {"sleep_ms": 2000, "real": True},
                                                mode="webhook")  # fmt: skip
    wait_until(lambda: hooked.state(request_id).get(b"state") == b"submitted", timeout=20)
    token = hooked.state(request_id)[b"token"].decode()  # the ledger's webhook secret
    forged = {"id": "x", "status": "COMPLETED", "output": {"injected": True}}
    url = f"{hooked.receiver}/webhook/{request_id}"
    assert httpx.post(url, json=forged).status_code == 404  # no token
    assert httpx.post(url, params={"token": "guess"}, json=forged).status_code == 404
    assert (
        httpx.post(f"{hooked.receiver}/webhook/other", params={"token": token}).status_code == 404
    )
    # Even with the right token (say it leaked), the body is only a hint: the tracker
    # re-reads /status (the emulator counts the request), sees the job running, waits on.
    status_reads = emulator.stats("echo")["requests"].get("status", 0)
    assert httpx.post(url, params={"token": token}, json=forged).status_code == 200
    wait_until(lambda: emulator.stats("echo")["requests"].get("status", 0) > status_reads)
    assert hooked.producer.redis.llen(reply_to) == 0  # not ended early
    result = list(hooked.producer.replies(reply_to, timeout=30))[-1]
    assert (result["status"], result["output"]) == ("COMPLETED", {"sleep_ms": 2000, "real": True})
