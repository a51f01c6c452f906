"""A revoke before the endpoint has given the job an id (issue 11, item 3; the later
moments are in test_revoke_moments.py): before any worker of the bridge runs, while the
task waits in a paused broker queue, while ``POST /run`` is under way. Each gives one
outcome: one CANCELLED reply, a caller blocked in ``get()`` gets ``JobCancelled`` (never
Celery's ``TaskRevokedError``), and the endpoint gets a cancel for any job that exists
(counted by the emulator, each moment on an endpoint of its own).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Bridge, MakeBridge
from promisekit import add_endpoint
from revokekit import Waiter, assert_cancelled, reply_list, revoke_handled

from bridge.emulator.testing import EmulatorHandle, wait_until

# Every request to that endpoint is held this long, /run included: the revoke lands while
# the POST is under way. Below the 3 s read timeout of /cancel (the SDK's), which is held
# too.
SUBMIT_LATENCY_MS = 1500


@pytest.fixture(scope="module")
def endpoints(emulator: EmulatorHandle) -> dict[str, str]:
    return {
        "paused": add_endpoint(emulator, "rv-paused"),
        "slow": add_endpoint(emulator, "rv-slow"),
    }


@pytest.fixture(scope="module")
def early(make_bridge: MakeBridge, endpoints: dict[str, str]) -> Bridge:
    """One worker with a route per moment (the route's name is the moment's)."""
    return make_bridge(routes={name: {"endpoint_id": eid} for name, eid in endpoints.items()})


@pytest.fixture
def slow_submit(emulator: EmulatorHandle, endpoints: dict[str, str]) -> Iterator[str]:
    endpoint_id = endpoints["slow"]
    emulator.set_faults(endpoint_id, latency_ms=SUBMIT_LATENCY_MS)
    yield endpoint_id
    emulator.set_faults(endpoint_id)


def test_revoke_before_any_worker_runs(make_bridge: MakeBridge, emulator: EmulatorHandle) -> None:
    """No worker of this bridge is running when the task is sent and revoked."""
    endpoint_id = add_endpoint(emulator, "rv-cold")
    cold = make_bridge(routes={"cold": {"endpoint_id": endpoint_id}}, start=False)
    reply_to = reply_list(cold)
    result = cold.run("cold", {"sleep_ms": 5000, "moment": "cold"}, reply_to=reply_to)
    waiter = Waiter(cold, result)
    result.revoke()  # as a producer would: the bridge has no worker up yet
    cold.start()
    assert_cancelled(cold, emulator, waiter, reply_to, endpoint_id, jobs=0)  # never submitted


def test_revoke_while_the_queue_is_paused(
    early: Bridge, emulator: EmulatorHandle, endpoints: dict[str, str]
) -> None:
    """The worker runs but consumes nothing: the task waits in the broker's queue."""
    queue = early.settings.default_queue
    control = early.app.control
    assert control.cancel_consumer(queue, destination=[early.node], reply=True, timeout=10)
    try:
        reply_to = reply_list(early)
        job_input = {"sleep_ms": 5000, "moment": "paused"}
        result = early.run("paused", job_input, reply_to=reply_to)
        waiter = Waiter(early, result)
        wait_until(lambda: early.redis.llen(queue) >= 1, timeout=10)  # in the broker
        revoke_handled(early, result)
    finally:
        assert control.add_consumer(queue, destination=[early.node], reply=True, timeout=10)
    assert_cancelled(early, emulator, waiter, reply_to, endpoints["paused"], jobs=0)


def test_revoke_while_submitting(early: Bridge, emulator: EmulatorHandle, slow_submit: str) -> None:
    """``POST /run`` has reached the endpoint, which holds it 1.5 s before making the job."""
    endpoint_id = slow_submit
    reply_to = reply_list(early)
    result = early.run("slow", {"sleep_ms": 60_000, "moment": "slow"}, reply_to=reply_to)
    waiter = Waiter(early, result)
    wait_until(lambda: emulator.stats(endpoint_id)["requests"].get("run", 0) == 1, timeout=30)
    result.revoke()
    assert emulator.stats(endpoint_id)["submissions"] == 0, "the job was made before the revoke"
    assert_cancelled(early, emulator, waiter, reply_to, endpoint_id, jobs=1)
