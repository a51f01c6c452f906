"""A route's ``max_in_flight`` holds new submissions back: the endpoint never sees more
jobs of that route in flight than the cap, and every request still completes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from conftest import Bridge, MakeBridge

from bridge.emulator.settings import EndpointConfig
from bridge.emulator.testing import EmulatorHandle

CAP = 2


@pytest.fixture(scope="module")
def capped(emulator: EmulatorHandle, make_bridge: MakeBridge) -> Iterator[tuple[Bridge, str]]:
    """A bridge whose route ``capped`` (cap 2, through BRIDGE_ROUTES) sends to an endpoint
    of its own with room for 10 workers, so only the cap can hold jobs back."""
    endpoint = f"capped-{uuid.uuid4().hex[:8]}"
    config = EndpointConfig(
        id=endpoint, name=endpoint, templateId="echo", workersMax=10,
        scalerType="REQUEST_COUNT", scalerValue=1, idleTimeout=30,
    )  # fmt: skip
    emulator.call(emulator.engine.add_endpoint, config)
    try:
        bridge = make_bridge(routes={"capped": {"endpoint_id": endpoint, "max_in_flight": CAP}})
        assert f'"max_in_flight":{CAP}' in bridge.env["BRIDGE_ROUTES"].replace(" ", "")
        yield bridge, endpoint
    finally:
        emulator.call(emulator.engine.delete_endpoint, endpoint)


def test_endpoint_never_sees_more_than_max_in_flight(
    capped: tuple[Bridge, str], emulator: EmulatorHandle
) -> None:
    bridge, endpoint = capped
    sent = [bridge.producer.send("capped", {"sleep_ms": 500, "k": k}) for k in range(6)]
    samples: list[int] = []
    deadline = time.monotonic() + 30
    with httpx.Client(
        base_url=emulator.url, headers={"Authorization": f"Bearer {emulator.api_key}"}
    ) as http:
        while not all(bridge.redis.llen(reply_to) for _, reply_to in sent):
            assert time.monotonic() < deadline, f"not all done in 30 s; samples {samples}"
            jobs = http.get(f"/_emulator/jobs/{endpoint}").json()["jobs"]
            samples.append(sum(j["status"] in ("IN_QUEUE", "IN_PROGRESS") for j in jobs))
            time.sleep(0.02)
    results = [bridge.result(reply_to) for _, reply_to in sent]
    assert [r["status"] for r in results] == ["COMPLETED"] * 6
    assert [r["output"]["k"] for r in results] == list(range(6))
    assert max(samples) == CAP, samples  # never more, and the cap was used
    assert emulator.stats(endpoint)["submissions"] == 6
