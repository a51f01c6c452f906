"""An external worker's stop signals stay pending until the worker lets go of the job
(issue 11 item 4); no sockets, no sleeps."""

from __future__ import annotations

import asyncio

from bridge.emulator.state import Worker

HOUR = 3600.0


def worker() -> Worker:
    return Worker(id="w1", external=True, state="running")


async def test_a_new_stop_is_delivered_at_once_then_repeated() -> None:
    w = worker()
    w.signal_stop("j1", handed_at=10.0)
    assert await w.wait_stop(HOUR, HOUR) == ["j1"]
    # Delivered but not obeyed yet: the next poll repeats it after the redelivery pause.
    assert await w.wait_stop(HOUR, 0) == ["j1"]
    assert await w.wait_stop(0, HOUR) == ["j1"]


async def test_a_poll_holding_for_redelivery_wakes_for_a_new_stop() -> None:
    w = worker()
    w.signal_stop("j1", handed_at=10.0)
    await w.wait_stop(HOUR, HOUR)
    poll = asyncio.create_task(w.wait_stop(HOUR, HOUR))
    await asyncio.sleep(0)  # let the poll start waiting
    assert not poll.done()
    w.signal_stop("j2", handed_at=11.0)
    assert sorted(await asyncio.wait_for(poll, 5)) == ["j1", "j2"]


async def test_nothing_pending_holds_until_timeout() -> None:
    assert await worker().wait_stop(0, HOUR) == []


def test_a_ping_that_stops_listing_the_job_ends_its_stop() -> None:
    w = worker()
    w.signal_stop("j1", handed_at=10.0)
    w.pinged({"j1"}, now=11.0)
    assert list(w.stops) == ["j1"]
    w.pinged(set(), now=12.0)
    assert w.stops == {}


def test_the_first_ping_after_the_take_may_be_stale() -> None:
    """A ping written before the worker had the job arrives without it: it must not end
    the stop; a second one without it does."""
    w = worker()
    w.pinged(set(), now=9.0)  # before the job was handed out
    w.signal_stop("j1", handed_at=10.0)
    w.pinged(set(), now=10.5)  # may have been written before the take
    assert list(w.stops) == ["j1"]
    w.pinged(set(), now=11.5)  # the previous ping came after the take: it is really gone
    assert w.stops == {}


def test_other_jobs_in_a_ping_do_not_keep_a_stop() -> None:
    w = worker()
    w.signal_stop("j1", handed_at=10.0)
    w.pinged({"j1", "j2"}, now=11.0)
    w.pinged({"j2"}, now=12.0)
    assert w.stops == {}


def test_done_or_holding_nothing_ends_stops() -> None:
    w = worker()
    w.signal_stop("j1", handed_at=10.0)
    w.signal_stop("j2", handed_at=10.0)
    w.stopped("j1")
    assert list(w.stops) == ["j2"]
    w.holds_nothing()
    assert w.stops == {}
