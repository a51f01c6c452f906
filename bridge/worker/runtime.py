"""One asyncio event loop per worker process, on its own thread, started at worker boot.

Celery tasks are synchronous; they hand work to the loop with :meth:`LoopThread.call`
and wait only for the hand-over, never for the GPU job (never ``asyncio.run()`` per
task). The pattern is dramatiq's ``EventLoopThread``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running forever on a daemon thread."""

    def __init__(self, name: str = "bridge-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from another thread); raises
        ``TimeoutError`` after ``timeout`` seconds (the coroutine runs on).

        Cheaper than ``asyncio.run_coroutine_threadsafe``, which chains a
        ``concurrent.futures.Future`` to the task through more loop callbacks: here the
        task's own done-callback wakes the caller (one lock, released once)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.call() from the loop's own thread would deadlock")
        done = threading.Lock()
        done.acquire()
        box: list[asyncio.Task[T]] = []

        def finished(task: asyncio.Task[T]) -> None:
            box.append(task)
            done.release()

        def start() -> None:
            self.loop.create_task(coro).add_done_callback(finished)

        self.loop.call_soon_threadsafe(start)
        if not done.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"the event loop did not answer within {timeout} s")
        task = box[0]
        if task.cancelled():
            raise concurrent.futures.CancelledError()
        return task.result()

    def stop(self, timeout: float = 10) -> None:
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
