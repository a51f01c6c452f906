"""LoopThread.call: a blocking thread hands a coroutine to the worker's loop and gets its
result, its exception, or a TimeoutError."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator

import pytest

from bridge.worker.runtime import LoopThread


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread(name="test-loop")
    thread.start()
    yield thread
    thread.stop()


async def _double(n: int) -> int:
    await asyncio.sleep(0)
    return n * 2


async def _fails() -> None:
    raise ValueError("broken")


def test_a_result_comes_back(loop_thread: LoopThread) -> None:
    assert [loop_thread.call(_double(i), timeout=5) for i in range(3)] == [0, 2, 4]


def test_an_exception_reaches_the_caller(loop_thread: LoopThread) -> None:
    with pytest.raises(ValueError, match="broken"):
        loop_thread.call(_fails(), timeout=5)


def test_no_answer_in_time_is_a_timeout_and_the_coroutine_runs_on(
    loop_thread: LoopThread,
) -> None:
    gate: list[asyncio.Event] = []

    async def make_gate() -> None:
        gate.append(asyncio.Event())

    async def waits() -> str:
        await gate[0].wait()
        return "done"

    loop_thread.call(make_gate(), timeout=5)
    with pytest.raises(TimeoutError):
        loop_thread.call(waits(), timeout=0)

    async def open_gate() -> None:
        gate[0].set()

    loop_thread.call(open_gate(), timeout=5)


def test_a_cancelled_coroutine_raises_cancelled(loop_thread: LoopThread) -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(concurrent.futures.CancelledError):
        loop_thread.call(cancelled(), timeout=5)
