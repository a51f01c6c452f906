"""Lost ``/run`` responses (issue 11, item 2): the endpoint processes the request, then the
connection drops (the emulator's seeded ``drop_after_rate``), so the bridge cannot know
whether a job was made. No endpoint API offers an idempotency key: the route's
``delivery`` decides, and the endpoint's own counters show that it did exactly that.

- ``at_least_once``: sent again; every request COMPLETED; the endpoint's submissions, per
  request and in all, equal the replies' ``submissions``; the extra ones are counted in
  ``bridge_ambiguous_resubmits_total{cause="lost_response"}``.
- ``at_most_once``: never sent again; those requests end FAILED ``ambiguous_submit`` and
  are dead-lettered once each; the endpoint got exactly one submission per request.
"""

from __future__ import annotations

from collections import Counter

from conftest import Bridge, MakeBridge, assert_no_late_replies
from promisekit import add_endpoint, dead_letters, drain, free_port, jobs_by_marker, metric

from bridge.emulator.testing import EmulatorHandle, wait_until

REQUESTS = 200
# Seeded: the same sequence of fates each run. Every operation draws (a dropped status
# read is retried, harmless); at 10 % about 20 of the 200 POSTs of /run lose their answer.
DROPS = {"drop_after_rate": 0.10, "seed": 11}


def _send_all(bridge: Bridge, endpoint_id: str) -> list[tuple[str, str]]:
    return [bridge.producer.send("lost", {"k": f"{endpoint_id}/{k}", "sleep_ms": 50})
            for k in range(REQUESTS)]  # fmt: skip


def test_at_least_once_resubmits_and_counts_every_submission(
    make_bridge: MakeBridge, emulator: EmulatorHandle
) -> None:
    endpoint_id = add_endpoint(emulator, "lost-alo")
    port = free_port()
    bridge = make_bridge(
        routes={"lost": {"endpoint_id": endpoint_id, "delivery": "at_least_once"}},
        metrics_port=port,
    )
    emulator.set_faults(endpoint_id, **DROPS)
    sent = _send_all(bridge, endpoint_id)
    replies = {rid: drain(bridge.redis, to, timeout=120) for rid, to in sent}
    assert_no_late_replies(bridge.redis, bridge.settings, [to for _, to in sent])
    emulator.set_faults(endpoint_id)
    stats = emulator.stats(endpoint_id)
    per_request = jobs_by_marker(emulator, endpoint_id, "k")

    missing = [rid for rid, r in replies.items() if not r]
    assert not missing, f"{len(missing)} requests unanswered, e.g. {missing[:3]}"
    statuses = Counter(r[-1]["status"] for r in replies.values())
    assert statuses == {"COMPLETED": REQUESTS}, statuses
    claimed = sum(r[-1]["submissions"] for r in replies.values())
    extra = stats["submissions"] - REQUESTS
    print(f"\nat_least_once: {REQUESTS} requests, {stats['submissions']} submissions at the "
          f"endpoint ({extra} resubmitted after a lost answer), replies say {claimed}; "
          f"faults {stats['faults_by_kind']}")  # fmt: skip
    assert extra > 0, f"no /run answer was lost: the test proves nothing ({stats})"
    assert stats["submissions"] == claimed
    # request by request: the jobs the endpoint holds for it = what its reply says
    inputs = {rid: f"{endpoint_id}/{k}" for k, (rid, _) in enumerate(sent)}
    differ = {
        rid: (per_request[inputs[rid]], r[-1]["submissions"])
        for rid, r in replies.items()
        if per_request[inputs[rid]] != r[-1]["submissions"]
    }
    assert not differ, f"endpoint's jobs vs reply's submissions differ: {differ}"
    assert stats["faults_by_kind"]["dropped_after"] >= extra
    resubmits = metric(port, "bridge_ambiguous_resubmits_total", route="lost",
                       cause="lost_response")  # fmt: skip
    assert resubmits == extra
    assert dead_letters(bridge.redis, bridge.settings.dlq_stream, "ambiguous_submit") == []


def test_at_most_once_fails_ambiguous_and_never_resubmits(
    make_bridge: MakeBridge, emulator: EmulatorHandle
) -> None:
    endpoint_id = add_endpoint(emulator, "lost-amo")
    port = free_port()
    bridge = make_bridge(
        routes={"lost": {"endpoint_id": endpoint_id, "delivery": "at_most_once"}},
        metrics_port=port,
    )
    emulator.set_faults(endpoint_id, **DROPS)
    sent = _send_all(bridge, endpoint_id)
    replies = {rid: drain(bridge.redis, to, timeout=120) for rid, to in sent}
    assert_no_late_replies(bridge.redis, bridge.settings, [to for _, to in sent])
    emulator.set_faults(endpoint_id)
    stats = emulator.stats(endpoint_id)
    per_request = jobs_by_marker(emulator, endpoint_id, "k")

    missing = [rid for rid, r in replies.items() if not r]
    assert not missing, f"{len(missing)} requests unanswered, e.g. {missing[:3]}"
    endings = Counter((r[-1]["status"], r[-1].get("reason")) for r in replies.values())
    failed = sorted(rid for rid, r in replies.items() if r[-1]["status"] == "FAILED")
    print(f"\nat_most_once: {REQUESTS} requests, {stats['submissions']} submissions at the "
          f"endpoint; endings {dict(endings)}; faults {stats['faults_by_kind']}")  # fmt: skip
    assert set(endings) <= {("COMPLETED", None), ("FAILED", "ambiguous_submit")}, endings
    assert failed, f"no /run answer was lost: the test proves nothing ({stats})"
    # never sent again: one job per request at the endpoint, the ambiguous ones included
    assert stats["submissions"] == REQUESTS
    assert len(per_request) == REQUESTS
    assert set(per_request.values()) == {1}
    assert sum(r[-1]["submissions"] for r in replies.values()) == REQUESTS
    # each ambiguous one dead-lettered exactly once (the letter follows the reply)
    stream = bridge.settings.dlq_stream
    wait_until(lambda: len(dead_letters(bridge.redis, stream, "ambiguous_submit")) >= len(failed),
               timeout=30)  # fmt: skip
    letters = dead_letters(bridge.redis, stream, "ambiguous_submit")
    assert sorted(letters) == failed
    assert metric(port, "bridge_ambiguous_resubmits_total", route="lost",
                  cause="lost_response") == 0  # fmt: skip
