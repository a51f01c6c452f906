"""``bridge.run``'s strategy: ordinary messages go straight to the loop, a batch per
wake-up, and are acknowledged once admitted; anything else, and anything the loop could
not admit, goes through Celery's own strategy."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.thread import TaskPool as ThreadPool

from bridge.core.model import Admitted, Continuation, Refusal
from bridge.worker import handover
from bridge.worker.handover import Handover, Inbox

CHAIN = [{"task": "next", "args": [], "kwargs": {}, "options": {}, "subtask_type": None}]


class FakeMessage:
    """A protocol 2 task message as kombu hands it to a strategy."""

    def __init__(self, kwargs: dict[str, Any] | None = None, args: Any = None,
                 embed: dict[str, Any] | None = None, **headers: Any) -> None:  # fmt: skip
        self.headers = {"id": "task-1", "task": "bridge.run", "root_id": "root-1",
                        "parent_id": None, "argsrepr": "()", "kwargsrepr": "{}"}  # fmt: skip
        self.headers.update(headers)
        self.body = json.dumps([[] if args is None else args, kwargs or {}, embed or {}])

    def decode(self) -> Any:
        return json.loads(self.body)


class Recorder:
    """Celery's fallback strategy, event dispatcher and consumer, as calls recorded."""

    def __init__(self) -> None:
        self.fallback_calls: list[tuple[Any, ...]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.soon: list[Any] = []
        self.connection_errors = (ConnectionError,)

    def fallback(self, *args: Any, **kw: Any) -> None:
        self.fallback_calls.append(args)

    def send(self, type_: str, **fields: Any) -> None:
        self.events.append((type_, fields))

    def call_soon(self, func: Any) -> None:
        self.soon.append(func)


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the wake-ups asked from other threads."""

    wakeups = 0

    def call_soon_threadsafe(self, *args: Any, **kw: Any) -> Any:
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kw)


@pytest.fixture
def loop() -> Iterator[CountingLoop]:
    loop = CountingLoop()
    yield loop
    loop.close()


def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Run the loop until the inbox has taken its batch and every admission ended."""
    loop.run_until_complete(asyncio.sleep(0))  # the scheduled drain runs
    pending = asyncio.all_tasks(loop)
    if pending:
        loop.run_until_complete(asyncio.gather(*pending))


class Admissions:
    """``BridgeService.admit_task``: records its calls, answers ``answer``."""

    def __init__(self, answer: Any = Admitted.ACCEPTED) -> None:
        self.answer = answer
        self.calls: list[tuple[dict[str, Any], list[str], Continuation]] = []

    async def __call__(self, arguments: dict[str, Any], unexpected: list[str],
                       continuation: Continuation) -> Any:  # fmt: skip
        self.calls.append((arguments, unexpected, continuation))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def acks() -> tuple[list[tuple[Any, ...]], Any]:
    calls: list[tuple[Any, ...]] = []
    return calls, lambda *args: calls.append(args)


def wire(loop: asyncio.AbstractEventLoop, admit: Admissions, rec: Recorder,
         events: bool = True) -> tuple[Handover, Inbox]:  # fmt: skip
    inbox = Inbox(loop, admit, rec, rec.fallback, rec if events else None)
    return Handover(rec.fallback, rec if events else None, lambda: inbox), inbox


def test_an_ordinary_message_is_admitted_on_the_loop_then_acknowledged(loop: CountingLoop) -> None:
    rec, admit = Recorder(), Admissions()
    handler, _ = wire(loop, admit, rec)
    acked, ack = acks()
    message = FakeMessage({"route": "echo", "input": {"x": 1}, "colour": "red"},
                          embed={"chain": CHAIN, "callbacks": None})  # fmt: skip
    handler(message, None, ack, "reject", None)
    assert admit.calls == []
    assert acked == []  # not on the consumer's thread
    settle(loop)
    [(arguments, unexpected, continuation)] = admit.calls
    assert arguments == {"route": "echo", "input": {"x": 1}}
    assert unexpected == ["colour"]  # refused by admission, by name
    assert continuation == Continuation(task_id="task-1", root_id="root-1", chain=CHAIN)
    assert acked == [(handover.celery_log, rec.connection_errors)]
    assert [kind for kind, _ in rec.events] == ["task-received", "task-started", "task-succeeded"]
    assert rec.events[2][1]["result"] == repr("accepted")
    assert all(fields["uuid"] == "task-1" for _, fields in rec.events)
    assert rec.fallback_calls == []


def test_positional_arguments_are_named(loop: CountingLoop) -> None:
    rec, admit = Recorder(), Admissions()
    handler, _ = wire(loop, admit, rec)
    handler(FakeMessage(args=["echo", {"x": 1}]), None, acks()[1], None, None)
    settle(loop)
    assert admit.calls[0][0] == {"route": "echo", "input": {"x": 1}}


def test_a_burst_wakes_the_loop_once_and_is_admitted_together(loop: CountingLoop) -> None:
    rec, admit = Recorder(), Admissions()
    handler, _ = wire(loop, admit, rec)
    acked, ack = acks()
    for i in range(50):
        handler(FakeMessage({"route": "echo"}, id=f"t-{i}"), None, ack, None, None)
    assert loop.wakeups == 1
    settle(loop)
    assert [c.task_id for _, _, c in admit.calls] == [f"t-{i}" for i in range(50)]
    assert len(acked) == 50
    handler(FakeMessage({"route": "echo"}, id="late"), None, ack, None, None)
    assert loop.wakeups == 2  # the next one after the batch was taken wakes it again
    settle(loop)
    assert len(acked) == 51


def test_a_refused_request_is_acknowledged_too(loop: CountingLoop) -> None:
    """Admission answered it (REJECTED reply, dead letter, result): the message is done."""
    rec = Recorder()
    refusal = Refusal("bad_route", "no such route", "task-1", "nope")
    handler, _ = wire(loop, Admissions(refusal), rec)
    acked, ack = acks()
    handler(FakeMessage({"route": "nope"}), None, ack, None, None)
    settle(loop)
    assert len(acked) == 1
    assert rec.events[-1][1]["result"] == repr("rejected")


@pytest.mark.parametrize("answer", [Admitted.DEFERRED, ConnectionError("Redis away"),
                                    RuntimeError("a bug")])  # fmt: skip
def test_what_the_loop_could_not_admit_goes_through_celerys_path(
    loop: CountingLoop, answer: Any
) -> None:
    """An open breaker, Redis away, anything unexpected: Celery's strategy and task take
    it (they retry later, hand it back to the broker, or report the failure); it is not
    acknowledged here."""
    rec = Recorder()
    handler, _ = wire(loop, Admissions(answer), rec)
    acked, ack = acks()
    message = FakeMessage({"route": "echo"})
    handler(message, None, ack, "reject", None)
    settle(loop)
    assert acked == []
    assert rec.fallback_calls == []
    [handle] = rec.soon  # on the consumer's thread, through its call_soon
    handle()
    assert rec.fallback_calls == [(message, None, ack, "reject", None)]
    assert [kind for kind, _ in rec.events] == ["task-received"]


def test_a_failing_fallback_leaves_the_message_unacknowledged(
    loop: CountingLoop, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    handler, inbox = wire(loop, Admissions(Admitted.DEFERRED), rec)

    def broken(*_: Any) -> None:
        raise ValueError("broken")

    inbox.fallback = broken
    acked, ack = acks()
    handler(FakeMessage({"route": "echo"}), None, ack, None, None)
    settle(loop)
    with caplog.at_level(logging.ERROR, "bridge.handover"):
        rec.soon[0]()
    assert acked == []
    assert "could not go through Celery's path" in caplog.text


def test_an_acknowledgement_that_fails_is_logged(
    loop: CountingLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """The message stays unacknowledged and comes back; the ledger answers it once."""
    rec, admit = Recorder(), Admissions()
    handler, _ = wire(loop, admit, rec)

    def failing_ack(*_: Any) -> None:
        raise ConnectionError("broker away")

    with caplog.at_level(logging.ERROR, "bridge.handover"):
        handler(FakeMessage({"route": "echo"}), None, failing_ack, None, None)
        settle(loop)
    assert len(admit.calls) == 1
    assert "its acknowledgement or task events failed" in caplog.text


def test_no_events_when_celery_sends_none(loop: CountingLoop) -> None:
    rec = Recorder()
    handler, _ = wire(loop, Admissions(), rec, events=False)
    acked, ack = acks()
    handler(FakeMessage({"route": "echo"}), None, ack, None, None)
    settle(loop)
    assert len(acked) == 1
    assert rec.events == []


def _in_a_minute(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


@pytest.mark.parametrize(
    ("message", "body", "callbacks"),
    [
        (FakeMessage({"route": "echo"}, eta=_in_a_minute(1)), None, None),  # a retry
        (FakeMessage({"route": "echo"}, expires=_in_a_minute(-1)), None, None),
        (FakeMessage({"route": "echo"}, expires="not a date"), None, None),
        (FakeMessage({"route": "echo"}, group="g-1"), None, None),
        (FakeMessage({"route": "echo"}, embed={"chord": {"task": "c"}}), None, None),
        (FakeMessage({"route": "echo"}), {"args": [], "kwargs": {}}, None),  # protocol 1
        (FakeMessage({"route": "echo"}), None, {"autoscaler"}),
        (FakeMessage(args={"not": "a list"}), None, None),
    ],
    ids=[
        "eta",
        "expired",
        "bad-expires",
        "group",
        "chord",
        "protocol-1",
        "callbacks",
        "odd-args",
    ],
)
def test_the_unusual_goes_through_celerys_strategy(
    loop: CountingLoop, message: FakeMessage, body: Any, callbacks: Any
) -> None:
    rec, admit = Recorder(), Admissions()
    handler, _ = wire(loop, admit, rec)
    handler(message, body, "ack", "reject", callbacks)
    settle(loop)
    assert admit.calls == []
    assert rec.events == []
    assert len(rec.fallback_calls) == 1
    assert rec.fallback_calls[0][0] is message


def test_a_message_that_expires_later_takes_the_short_path(loop: CountingLoop) -> None:
    rec, admit = Recorder(), Admissions()
    handler, _ = wire(loop, admit, rec)
    handler(FakeMessage({"route": "echo"}, expires=_in_a_minute(5)), None, acks()[1], None, None)
    settle(loop)
    assert len(admit.calls) == 1
    assert rec.fallback_calls == []


def test_before_the_bridge_starts_everything_goes_through_celery() -> None:
    rec = Recorder()
    handler = Handover(rec.fallback, None, lambda: None)
    message = FakeMessage({"route": "echo"})
    handler(message, None, "ack", "reject", None)
    assert rec.fallback_calls == [(message, None, "ack", "reject", None)]


@pytest.mark.parametrize(("pool", "short"), [(ThreadPool, True), (PreforkPool, False)])
def test_only_pools_that_share_the_bridges_process_take_the_short_path(
    monkeypatch: pytest.MonkeyPatch, pool: type, short: bool
) -> None:
    """A prefork parent has no bridge: its children run the task, as Celery does."""
    celery_default = object()
    monkeypatch.setattr(handover, "default", lambda *a, **kw: celery_default)
    consumer = SimpleNamespace(
        pool=pool.__new__(pool), event_dispatcher=None, disable_rate_limits=False
    )
    task = SimpleNamespace(send_events=True, rate_limit=None)
    chosen = handover.strategy(task, None, consumer)
    assert isinstance(chosen, Handover) is short
    assert (chosen is celery_default) is not short


@pytest.mark.parametrize(
    ("rate_limit", "disabled", "short"),
    [("10/s", False, False), ("10/s", True, True), (None, False, True)],
)
def test_a_rate_limit_on_bridge_run_keeps_celerys_pacing(
    monkeypatch: pytest.MonkeyPatch, rate_limit: str | None, disabled: bool, short: bool
) -> None:
    monkeypatch.setattr(handover, "default", lambda *a, **kw: "celery's")
    consumer = SimpleNamespace(pool=ThreadPool.__new__(ThreadPool), event_dispatcher=None,
                               disable_rate_limits=disabled)  # fmt: skip
    chosen = handover.strategy(SimpleNamespace(send_events=True, rate_limit=rate_limit), None,
                               consumer)  # fmt: skip
    assert isinstance(chosen, Handover) is short
