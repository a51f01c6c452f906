"""Endpoint faults: 10 % 5xx, 5 % dropped connections and a burst of 429s over a few
thousand requests. Nothing is lost, nothing is submitted twice, and requests whose
submission keeps failing end in the dead-letter stream with their reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from bridgekit import cleanup, make_setup
from conftest import start_worker, stop_processes, wait_ready

from bridge.emulator.settings import EmulatorSettings, EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator, wait_until

JOBS = 400
FAULTS = {"error_rate": 0.10, "drop_rate": 0.05, "seed": 9}  # seeded: the same draws each run
BURST = 50  # 429s the endpoint must have answered before the burst ends


@pytest.fixture
def flaky() -> Iterator[EmulatorHandle]:
    fast = {"workersMax": 1000, "coldStartMs": 0, "scalerType": "REQUEST_COUNT", "scalerValue": 1}
    settings = EmulatorSettings.load(
        host="127.0.0.1",
        port=0,
        templates=[TemplateConfig(id="echo", imageName="echo")],
        endpoints=[EndpointConfig(id="echo", templateId="echo", **fast)],
    )
    with running_emulator(settings) as handle:
        yield handle


def test_faults_lose_nothing_and_duplicate_nothing(
    flaky: EmulatorHandle, redis_url: str, tmp_path: Path
) -> None:
    # The breaker has its own test; here the doomed requests must use up their retries.
    setup = make_setup(flaky, redis_url, tmp_path / "worker.log", {"breaker_threshold": "1000"})
    worker = start_worker(setup.env, setup.log)
    try:
        wait_ready(setup.app, worker, setup.log)
        flaky.set_faults("echo", **FAULTS)
        sent = [setup.producer.send("echo", {"k": k, "sleep_ms": 300}) for k in range(JOBS)]
        half = sent[: JOBS // 2]
        results = [list(setup.producer.replies(reply_to, timeout=120)) for _, reply_to in half]
        limited = flaky.stats("echo")["faults_by_kind"]["rate_limited"]
        flaky.set_faults("echo", **FAULTS, rate_limit_rate=1.0)
        burst = [setup.producer.send("echo", {"burst": b}) for b in range(50)]
        # the burst lasts until the endpoint has answered BURST requests with a 429
        wait_until(
            lambda: flaky.stats("echo")["faults_by_kind"]["rate_limited"] - limited >= BURST,
            timeout=60,
        )
        flaky.set_faults("echo", **FAULTS)  # the 429 burst ends
        rest = sent[JOBS // 2 :] + burst
        results += [list(setup.producer.replies(reply_to, timeout=120)) for _, reply_to in rest]
        stats = flaky.stats("echo")
        flaky.set_faults("echo", error_rate=1.0)  # an endpoint that only fails
        doomed = [setup.producer.send("echo", {"doomed": d}) for d in range(3)]
        doomed_results = [list(setup.producer.replies(r, timeout=120))[-1] for _, r in doomed]
        # the dead letter is written just after the final reply
        wait_until(lambda: setup.redis.xlen(setup.settings.dlq_stream) >= 3, timeout=10)
        letters = setup.redis.xrange(setup.settings.dlq_stream)
    finally:
        flaky.set_faults("echo")
        stop_processes([worker])  # SIGKILL after 20 s: a stuck worker must not outlive us
        cleanup(setup)
    total = JOBS + 50
    assert [len(r) for r in results] == [1] * total  # exactly one final reply each
    statuses = Counter(r[-1]["status"] for r in results)
    assert statuses == {"COMPLETED": total}, statuses
    assert stats["submissions"] == total  # injected faults happen before processing
    requests = sum(stats["requests"].values())
    faults = stats["faults_injected"]
    print(f"\n{total} jobs, {requests} requests, {faults} injected faults: "
          f"{statuses['COMPLETED']} completed, {stats['submissions']} submissions")  # fmt: skip
    assert requests > 1000
    injected = stats["faults_by_kind"]
    assert injected["rate_limited"] >= BURST
    # a fixed seed: the first 1,000 draws alone hold dozens of each kind
    assert injected["error"] >= 10, injected
    assert injected["dropped"] >= 5, injected
    assert [(r["status"], r["reason"]) for r in doomed_results] == [("FAILED", "submit_failed")] * 3
    reasons = [fields[b"reason"] for _, fields in letters]
    assert reasons == [b"submit_failed"] * 3
