"""A revoke at every moment of a Celery-door request gives one outcome (issue 11, item 3):
``AsyncResult.get()`` raises ``JobCancelled`` (after the end: returns the output), the
request's reply list gets exactly one final reply, and the endpoint receives a cancel
whenever a job exists, and only then. One test per moment, each on an endpoint of its
own, so the endpoint's counters (submissions, cancels) and its jobs count that moment
alone. This file: once the endpoint has the job and the caller can see it (the task's
state is IN_QUEUE or IN_PROGRESS), and after the end; the moments before that are in
test_revoke_early.py.
"""

from __future__ import annotations

import pytest
from celery.result import AsyncResult
from conftest import Bridge, MakeBridge
from promisekit import add_endpoint, job_statuses
from revokekit import Waiter, assert_cancelled, one_final, reply_list, revoke_handled

from bridge.emulator.testing import EmulatorHandle, wait_until


@pytest.fixture(scope="module")
def endpoints(emulator: EmulatorHandle) -> dict[str, str]:
    """One endpoint per moment; ``queued`` has no workers, so its jobs wait in its queue."""
    return {
        "queued": add_endpoint(emulator, "rv-queued", workersMax=0),
        "flight": add_endpoint(emulator, "rv-flight"),
        "after": add_endpoint(emulator, "rv-after"),
    }


@pytest.fixture(scope="module")
def moments(make_bridge: MakeBridge, endpoints: dict[str, str]) -> Bridge:
    """One worker with a route per moment (the route's name is the moment's)."""
    return make_bridge(routes={name: {"endpoint_id": eid} for name, eid in endpoints.items()})


def test_revoke_while_queued_at_the_endpoint(
    moments: Bridge, emulator: EmulatorHandle, endpoints: dict[str, str]
) -> None:
    endpoint_id = endpoints["queued"]
    reply_to = reply_list(moments)
    result = moments.run("queued", {"moment": "queued"}, reply_to=reply_to)
    waiter = Waiter(moments, result)
    wait_until(lambda: job_statuses(emulator, endpoint_id) == {"IN_QUEUE": 1}
               and result.state == "IN_QUEUE", timeout=30)  # fmt: skip
    result.revoke()
    assert_cancelled(moments, emulator, waiter, reply_to, endpoint_id, jobs=1)


def test_revoke_in_flight(
    moments: Bridge, emulator: EmulatorHandle, endpoints: dict[str, str]
) -> None:
    endpoint_id = endpoints["flight"]
    reply_to = reply_list(moments)
    result = moments.run("flight", {"sleep_ms": 60_000, "moment": "flight"}, reply_to=reply_to)
    waiter = Waiter(moments, result)
    wait_until(lambda: job_statuses(emulator, endpoint_id) == {"IN_PROGRESS": 1}
               and result.state == "IN_PROGRESS", timeout=30)  # fmt: skip
    result.revoke()
    assert_cancelled(moments, emulator, waiter, reply_to, endpoint_id, jobs=1)


def test_revoke_after_the_end_changes_nothing(
    moments: Bridge, emulator: EmulatorHandle, endpoints: dict[str, str]
) -> None:
    endpoint_id = endpoints["after"]
    reply_to = reply_list(moments)
    job_input = {"sleep_ms": 50, "moment": "after"}
    result = moments.run("after", job_input, reply_to=reply_to)
    assert result.get(timeout=60) == job_input
    revoke_handled(moments, result)
    final = one_final(moments, reply_to)  # the grace period also lets a wrong cancel show
    assert (final["status"], final["output"]) == ("COMPLETED", job_input)
    again = AsyncResult(result.id, app=moments.app)
    assert (again.get(timeout=10), again.state) == (job_input, "SUCCESS")
    stats = emulator.stats(endpoint_id)
    assert (stats["submissions"], stats["cancels"]) == (1, 0), stats
    assert job_statuses(emulator, endpoint_id) == {"COMPLETED": 1}
