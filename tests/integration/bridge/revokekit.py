"""Helpers of the revoke tests (test_revoke_moments.py, test_revoke_early.py): a caller
blocked in ``AsyncResult.get()``, and the one outcome a revoke must give, counted at the
emulator."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from celery.result import AsyncResult
from conftest import Bridge
from promisekit import drain, finals, job_statuses

from bridge.emulator.testing import EmulatorHandle
from bridge.errors import JobCancelled


class Waiter(threading.Thread):
    """A caller blocked in ``AsyncResult.get()`` from before the revoke (so it sees the
    first final state the result backend publishes, as a real caller would)."""

    def __init__(self, bridge: Bridge, result: AsyncResult) -> None:
        super().__init__(name=f"get-{result.id}", daemon=True)
        self.result = AsyncResult(result.id, app=bridge.app)
        self.value: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.result.get(timeout=60)
        except BaseException as exc:  # what get() raised is the outcome under test
            self.error = exc

    def outcome(self) -> Any:
        """What ``get()`` returned (or raise what it raised)."""
        self.join(timeout=90)
        assert not self.is_alive(), "get() did not return"
        if self.error is not None:
            raise self.error
        return self.value


def reply_list(bridge: Bridge) -> str:
    return bridge.producer.keys.reply(f"revoke-{uuid.uuid4()}")


def one_final(bridge: Bridge, reply_to: str) -> dict[str, Any]:
    """The request's one final reply: read it, then a grace period for a second."""
    got = finals(drain(bridge.redis, reply_to, timeout=60))
    assert len(got) == 1, f"final replies on {reply_to}: {got}"
    bridge.assert_no_late_reply(reply_to)
    return got[0]


def assert_cancelled(
    bridge: Bridge,
    emulator: EmulatorHandle,
    waiter: Waiter,
    reply_to: str,
    endpoint_id: str,
    jobs: int,
) -> None:
    """One CANCELLED reply; at the endpoint ``jobs`` submissions and as many cancels
    (every job that exists is cancelled there); the caller waiting in ``get()`` got
    JobCancelled."""
    final = one_final(bridge, reply_to)
    assert (final["status"], final.get("reason")) == ("CANCELLED", "cancelled"), final
    stats = emulator.stats(endpoint_id)
    assert (stats["submissions"], stats["cancels"]) == (jobs, jobs), stats
    assert job_statuses(emulator, endpoint_id) == ({"CANCELLED": jobs} if jobs else {})
    with pytest.raises(JobCancelled, match="cancel"):  # Celery's TaskRevokedError is wrong
        waiter.outcome()


def revoke_handled(bridge: Bridge, result: AsyncResult) -> None:
    """Revoke, and wait until this bridge's worker says it handled the revoke."""
    replies = bridge.app.control.revoke(
        result.id, destination=[bridge.node], reply=True, timeout=10
    )
    assert replies, f"worker {bridge.node} did not answer the revoke"
