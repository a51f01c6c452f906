"""``bridge.run`` meets a Redis that is away (a Sentinel failover): its message goes back
to the broker, never acknowledged as failed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Reject, Retry
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.worker.tasks import REDIS_AWAY, hand_back


class FakeTask:
    """Celery's ``Task.retry`` as seen from the task: it returns the Retry to raise, or
    raises ``Reject(requeue=False)`` when the broker cannot take the retried message."""

    def __init__(self, broker_up: bool) -> None:
        self.broker_up = broker_up
        self.request = SimpleNamespace(id="t-1")
        self.calls: list[dict[str, Any]] = []

    def retry(self, **kwargs: Any) -> Retry:
        self.calls.append(kwargs)
        if not self.broker_up:
            raise Reject(RedisConnectionError("broker away"), requeue=False)
        return Retry(exc=kwargs["exc"], when=kwargs["countdown"])


def test_a_retry_soon_when_the_broker_takes_it() -> None:
    task = FakeTask(broker_up=True)
    error = RedisConnectionError("Connection refused")
    raised = hand_back(task, error)
    assert isinstance(raised, Retry)
    assert task.calls == [{"countdown": 1.0, "exc": error, "throw": False}]


def test_requeued_when_the_broker_is_away_too() -> None:
    """Celery's own answer (Reject with requeue=False) would drop the message."""
    raised = hand_back(FakeTask(broker_up=False), RedisConnectionError("x"))
    assert isinstance(raised, Reject)
    assert raised.requeue is True


@pytest.mark.parametrize("name", ["ConnectionError", "TimeoutError", "MasterNotFoundError"])
def test_what_counts_as_redis_away(name: str) -> None:
    import redis.exceptions
    import redis.sentinel

    error = getattr(redis.exceptions, name, None) or getattr(redis.sentinel, name)
    assert issubclass(error, REDIS_AWAY)
