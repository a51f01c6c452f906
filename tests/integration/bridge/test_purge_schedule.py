"""A purge schedule faster than the endpoint's purge budget (issue 11, item 7, found while
testing beat's purges): RunPod allows 2 ``/purge-queue`` per 10 s. A schedule faster than
that is refused when the settings load; purges beyond the budget (several schedules, or
by hand) are skipped at once, never pile up in the worker's Celery slots and never hold
back ``bridge.run``.
"""

from __future__ import annotations

import time

import pytest
from celery.exceptions import TimeoutError as CeleryTimeout
from conftest import MakeBridge
from promisekit import add_endpoint
from pydantic import ValidationError

from bridge.emulator.testing import EmulatorHandle

BEHIND_S = 15  # a bridge.run answered in ~50 ms on an idle machine; 15 s is a stall


def test_a_purge_schedule_faster_than_the_purge_budget_is_refused_at_load(
    make_bridge: MakeBridge, emulator: EmulatorHandle
) -> None:
    endpoint_id = add_endpoint(emulator, "rushed")
    with pytest.raises(ValidationError, match="shorter than the purge budget"):
        make_bridge(config_file=True, routes={"rushed": {"endpoint_id": endpoint_id,
                                                          "purge_every_s": 1}})  # fmt: skip


def test_purges_beyond_the_budget_are_skipped_and_hold_no_celery_slot(
    make_bridge: MakeBridge, emulator: EmulatorHandle
) -> None:
    """More purges than the budget allows (8 at once, RunPod allows 2 per 10 s): the ones
    without a slot are skipped at once, so a ``bridge.run`` behind them is answered as
    fast as ever, and the endpoint sees no more purges than its budget."""
    endpoint_id = add_endpoint(emulator, "rushed")
    rushed = make_bridge(routes={"rushed": {"endpoint_id": endpoint_id}})
    queue = rushed.settings.default_queue
    purges = [rushed.app.send_task("bridge.purge", args=("rushed",), queue=queue)
              for _ in range(8)]  # fmt: skip
    started = time.monotonic()
    try:
        output = rushed.run("echo", {"m": "behind the purges"}).get(timeout=BEHIND_S)
    except CeleryTimeout:
        output = None
    took = time.monotonic() - started
    results = [p.get(timeout=30) for p in purges]
    done = emulator.stats(endpoint_id)["purges"]
    assert output == {"m": "behind the purges"}, (
        f"bridge.run not answered within {took:.0f} s behind the purges; log: {rushed.log}"
    )
    assert sum(1 for r in results if r.get("skipped") == "budget") == 8 - done
    assert 1 <= done <= 2  # 90 % of 2 per 10 s (+3 s): one slot, two at a window's edge
