"""The worker's Prometheus metrics, scraped over HTTP after a few requests."""

from __future__ import annotations

import socket
import uuid

import httpx
from conftest import MakeBridge, door_drained
from prometheus_client.parser import text_string_to_metric_families

from bridge.emulator.testing import wait_until


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_what_happened(make_bridge: MakeBridge) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    bridge = make_bridge(metrics_port=port)
    for k in range(3):
        _, reply_to = bridge.producer.send("echo", {"k": k})
        bridge.result(reply_to)
    _, reply_to = bridge.producer.send("fail", {})
    bridge.result(reply_to)
    dup = f"dup-{uuid.uuid4()}"
    _, reply_to = bridge.producer.send("echo", {}, request_id=dup)
    bridge.producer.send("echo", {}, request_id=dup, reply_to=reply_to)
    bridge.result(reply_to)
    assert bridge.run("echo", {"celery": True}).get(timeout=30) == {"celery": True}
    bridge.app.send_task("bridge.health", args=("echo",)).get(timeout=30)

    def value(name: str, **labels: str) -> float:
        return scrape(port).get((name, tuple(sorted(labels.items()))), 0.0)

    wait_until(lambda: door_drained(bridge.redis, bridge.settings), timeout=30)  # dup handled
    wait_until(lambda: value("bridge_request_latency_seconds_count", route="echo",
                             mode="poll") >= 5, timeout=30)  # fmt: skip
    assert value("bridge_requests_received_total", door="json", route="echo") == 5
    assert value("bridge_requests_received_total", door="celery", route="echo") == 1
    assert value("bridge_dedup_hits_total", door="json") == 1
    assert value("bridge_jobs_submitted_total", route="echo") == 5
    done = {"route": "echo", "status": "COMPLETED", "reason": ""}
    assert value("bridge_jobs_finished_total", **done) == 5
    failed = {"route": "fail", "status": "FAILED", "reason": ""}
    assert value("bridge_jobs_finished_total", **failed) == 1
    assert value("bridge_in_flight", route="echo") == 0
    assert value("bridge_endpoint_execution_seconds_count", route="echo") == 5
    http_ok = value("bridge_endpoint_http_requests_total", operation="run", status="200")
    assert http_ok == 6
    assert value("bridge_endpoint_workers", route="echo", state="idle") >= 1
    assert value("bridge_endpoint_jobs", route="echo", state="completed") >= 5
