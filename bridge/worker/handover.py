"""``bridge.run``'s own Celery strategy: a message goes from Celery's consumer straight
to the bridge's event loop, in batches.

Celery's default strategy builds a request object per message, sends it through the
pool to a thread, which runs the task through Celery's tracer and waits there for the
loop to record the request. For a task that only hands over, that machinery cost more
than the hand-over itself, and every request arrived on the loop alone. Here the
consumer thread decodes the message and puts it in an inbox; the loop takes whatever
the inbox holds at each turn and admits it together (the claims share one Redis round
trip), then acknowledges each message through Celery's own acknowledgement callback
(as the threads pool does from its threads) and sends Celery's task events, so Flower
still sees each ``bridge.run`` received, started and succeeded.

Anything out of the ordinary takes Celery's own path, unchanged: the prefork and green
pools (their consumer has no bridge of its own), a rate limit set on ``bridge.run``
(Celery's token buckets pace it), a countdown or ETA (a retry after a
deferral), an expired message, a task in a chord or group, protocol 1 messages, the
autoscaler's callbacks; and, after the loop has seen it, a message whose endpoint's
breaker is open, whose admission failed, or that met Redis away: it goes back to the
consumer thread and through Celery's strategy, whose task admits it again (the ledger
makes that safe) and hands it back to the broker for later as it always has.

What Celery's path does and this one does not: ``bridge.run`` hand-overs are not listed
by ``celery inspect active/reserved`` (they last milliseconds), not counted in
``inspect stats``' totals, and do not fire the ``task_received``/``task_prerun`` signals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from celery.utils.time import maybe_iso8601, maybe_make_aware
from celery.worker.strategy import default

from bridge.core.model import Admitted, Continuation, Refusal
from bridge.ingress.admission import task_arguments
from bridge.worker.app import Runtime
from bridge.worker.tasks import REDIS_AWAY

log = logging.getLogger("bridge.handover")
celery_log = logging.getLogger("celery.app.trace")
"""Where Celery logs a task's success (and what its acknowledgements log to)."""
received_log = logging.getLogger("celery.worker.strategy")
"""Where Celery logs a task's receipt."""

Handler = Callable[..., Any]

SAME_PROCESS_POOLS = ("celery.concurrency.thread", "celery.concurrency.solo")
"""Pools whose tasks run in the consumer's process, beside this process' bridge."""


@dataclass(slots=True)
class Message:
    """One ``bridge.run`` message on its way to the loop."""

    message: Any
    ack: Any
    reject: Any
    callbacks: Any
    arguments: dict[str, Any]
    unexpected: list[str]
    continuation: Continuation
    received: float


Admit = Callable[[dict[str, Any], list[str], Continuation], Awaitable[Admitted | Refusal]]


class Inbox:
    """Messages from Celery's consumer thread, admitted on the loop a turn at a time.

    Args:
        loop: the bridge's event loop (it runs on another thread).
        admit: the Celery door's admission (``BridgeService.admit_task``).
        consumer: Celery's consumer: its ``call_soon`` (the way back to its thread) and
            ``connection_errors`` (what an acknowledgement may meet).
        fallback: Celery's own strategy, for what must go back through it.
        eventer: Celery's event dispatcher when task events are on, else None.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, admit: Admit, consumer: Any,
                 fallback: Handler, eventer: Any) -> None:  # fmt: skip
        self.loop, self.admit, self.consumer, self.fallback = loop, admit, consumer, fallback
        self.eventer = eventer
        self.errors = consumer.connection_errors
        self._messages: deque[Message] = deque()
        self._scheduled = False
        self._admitting: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly

    def put(self, item: Message) -> None:
        """From the consumer thread: one wake-up of the loop per batch, not per message
        (the loop clears the flag before it takes the batch, so none is left behind)."""
        self._messages.append(item)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        messages = self._messages
        admitting = self._admitting
        while messages:
            task = self.loop.create_task(self._admit(messages.popleft()))
            admitting.add(task)
            task.add_done_callback(admitting.discard)

    async def _admit(self, item: Message) -> None:
        task_id = item.continuation.task_id
        try:
            admitted = await self.admit(item.arguments, item.unexpected, item.continuation)
        except REDIS_AWAY as exc:  # Celery's path hands the message back to the broker
            log.debug("bridge.run %s: %s; through Celery's path", task_id, type(exc).__name__)
            admitted = None
        except Exception:  # a bug: Celery's path runs the task, which fails and reports it
            log.exception("bridge.run %s could not be admitted here; through Celery's path",
                          task_id)  # fmt: skip
            admitted = None
        if admitted is None or admitted is Admitted.DEFERRED:
            self._back_to_celery(item)
            return
        value = repr("rejected" if isinstance(admitted, Refusal) else admitted.value)
        runtime = time.monotonic() - item.received
        try:
            item.ack(celery_log, self.errors)
            if self.eventer is not None:
                self.eventer.send("task-started", uuid=task_id)
                self.eventer.send("task-succeeded", uuid=task_id, result=value, runtime=runtime)
            if celery_log.isEnabledFor(logging.INFO):
                success = {"id": task_id, "name": "bridge.run", "return_value": value,
                           "runtime": runtime}  # fmt: skip
                celery_log.info(LOG_SUCCESS, success, extra={"data": success})
        except Exception:  # the request is in: a message left unacknowledged comes back
            log.exception(
                "bridge.run %s admitted, but its acknowledgement or task events "
                "failed (a message delivered again is answered once)",
                task_id,
            )

    def _back_to_celery(self, item: Message) -> None:
        """Through Celery's own strategy, on the consumer thread (its task admits the
        request again and hands it back to the broker when it must)."""

        def handle() -> None:
            try:
                self.fallback(item.message, None, item.ack, item.reject, item.callbacks)
            except Exception:  # it stays unacknowledged: the broker delivers it again
                log.exception("bridge.run %s could not go through Celery's path",
                              item.continuation.task_id)  # fmt: skip

        self.consumer.call_soon(handle)


def _expired(expires: Any) -> bool:
    try:
        when = maybe_make_aware(maybe_iso8601(expires))
    except (TypeError, ValueError, OverflowError):
        return True  # Celery's path says what is wrong with it
    return bool(when is not None and when <= datetime.now(UTC))


class Handover:
    """The handler Celery's consumer calls with each ``bridge.run`` message: into the
    inbox, or through Celery's own strategy (see the module's documentation).

    Args:
        fallback: Celery's own strategy for ``bridge.run``.
        eventer: Celery's event dispatcher when task events are on, else None.
        inbox: this process' inbox, or None while its bridge has not started.
    """

    def __init__(self, fallback: Handler, eventer: Any, inbox: Callable[[], Inbox | None]) -> None:
        self.fallback, self.eventer, self.inbox = fallback, eventer, inbox

    def __call__(self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any,
                 **kw: Any) -> Any:  # fmt: skip
        headers = message.headers
        inbox = self.inbox()
        if (inbox is None or body is not None or callbacks or headers.get("eta")
                or headers.get("group") or (headers.get("expires")
                                            and _expired(headers["expires"]))):  # fmt: skip
            return self.fallback(message, body, ack, reject, callbacks, **kw)
        args, kwargs, embed = message.decode()
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(
            embed, dict
        ) or embed.get("chord"):  # fmt: skip
            return self.fallback(message, None, ack, reject, callbacks, **kw)
        task_id = headers["id"]
        if received_log.isEnabledFor(logging.INFO):
            received = {"id": task_id, "name": "bridge.run"}
            received_log.info(LOG_RECEIVED, received, extra={"data": received})
        if self.eventer is not None:
            self.eventer.send(
                "task-received", uuid=task_id, name="bridge.run",
                args=headers.get("argsrepr"), kwargs=headers.get("kwargsrepr"),
                root_id=headers.get("root_id"), parent_id=headers.get("parent_id"),
                retries=headers.get("retries", 0), eta=None, expires=headers.get("expires"),
            )  # fmt: skip
        arguments, unexpected = task_arguments(args, kwargs)
        continuation = Continuation(
            task_id=task_id, root_id=headers.get("root_id"), parent_id=headers.get("parent_id"),
            chain=embed.get("chain"), callbacks=embed.get("callbacks"),
            errbacks=embed.get("errbacks"),
        )  # fmt: skip
        inbox.put(Message(message, ack, reject, callbacks, arguments, unexpected,
                          continuation, time.monotonic()))  # fmt: skip
        return None


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Handler:
    """Celery's strategy hook for ``bridge.run`` (``Task.Strategy``)."""
    fallback: Handler = default(task, app, consumer, **kwargs)
    if type(consumer.pool).__module__ not in SAME_PROCESS_POOLS:
        return fallback
    if task.rate_limit and not consumer.disable_rate_limits:
        return fallback  # Celery's token buckets pace it
    eventer = consumer.event_dispatcher
    if not (eventer and eventer.enabled and task.send_events):
        eventer = None
    inboxes: list[Inbox] = []

    def inbox() -> Inbox | None:
        if not inboxes:
            runtime = Runtime.current()
            if runtime is None:
                return None
            inboxes.append(Inbox(runtime.loop.loop, runtime.service.admit_task, consumer,
                                 fallback, eventer))  # fmt: skip
        return inboxes[0]

    return Handover(fallback, eventer, inbox)
