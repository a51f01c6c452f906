"""A graceful stop (SIGTERM, as in a rolling restart) while POSTs of ``/run`` are under
way (issue 11, item 5): a stop is no crash, so it should leave nothing ambiguous: no
``ambiguous_submit`` failure under ``at_most_once``, no second job under
``at_least_once``; each request's one job is counted at the emulator.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from bridgekit import cleanup
from conftest import assert_no_late_replies, start_worker, stop_processes, wait_ready
from promisekit import add_endpoint, drain, finals, jobs_by_marker, routes_setup

from bridge.emulator.testing import EmulatorHandle, wait_until

SLOW_RUN_MS = 1500  # every /run held this long, so SIGTERM lands while POSTs are under way


@pytest.mark.parametrize("delivery", ["at_most_once", "at_least_once"])
def test_sigterm_while_posts_of_run_are_under_way(
    emulator: EmulatorHandle, redis_url: str, tmp_path: Path, delivery: str
) -> None:
    """A graceful stop (a rolling restart's SIGTERM) while 20 POSTs of ``/run`` have
    reached the endpoint and wait for their answers: the stop is no crash, so nothing
    should be left ambiguous (no ``ambiguous_submit`` failure, no second job)."""
    endpoint_id = add_endpoint(emulator, "term")
    setup = routes_setup(emulator, redis_url, tmp_path / "worker.log",
                         {"echo": {"endpoint_id": endpoint_id, "delivery": delivery}})  # fmt: skip
    emulator.set_faults(endpoint_id, latency_ms=SLOW_RUN_MS)
    first = start_worker(setup.env, setup.log)
    second = None
    try:
        wait_ready(setup.app, first, setup.log)
        sent = [setup.producer.send("echo", {"m": f"term-{k}"}) for k in range(20)]
        wait_until(lambda: emulator.stats(endpoint_id)["requests"].get("run", 0) == 20,
                   timeout=30)  # fmt: skip
        assert emulator.stats(endpoint_id)["submissions"] == 0  # all 20 still held
        first.terminate()
        code = first.wait(timeout=60)
        emulator.set_faults(endpoint_id)
        second = start_worker(setup.env, setup.log)
        wait_ready(setup.app, second, setup.log)
        replies = {rid: finals(drain(setup.redis, to, timeout=60)) for rid, to in sent}
        assert_no_late_replies(setup.redis, setup.settings, [to for _, to in sent])
    finally:
        emulator.set_faults(endpoint_id)
        stop_processes([p for p in (first, second) if p is not None])
        cleanup(setup)
    per_job = jobs_by_marker(emulator, endpoint_id, "m")
    endings = Counter((r[0]["status"], r[0].get("reason"), r[0]["submissions"])
                      for r in replies.values() if len(r) == 1)  # fmt: skip
    summary = (f"\nSIGTERM mid-submit ({delivery}): exit {code}; endings (status, reason, "
               f"submissions) {dict(endings)}; jobs per request at the endpoint "
               f"{dict(Counter(per_job.values()))}; submissions "
               f"{emulator.stats(endpoint_id)['submissions']}")  # fmt: skip
    print(summary)
    assert code == 0, summary
    assert all(len(r) == 1 for r in replies.values()), summary
    assert endings == {("COMPLETED", None, 1): 20}, summary
    assert sorted(per_job.values()) == [1] * 20, summary
