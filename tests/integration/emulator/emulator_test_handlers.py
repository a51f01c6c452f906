"""Handlers loaded by import path in the emulator's integration tests.

The emulator runs in-process (a background thread), so these module globals are how a
test sees what a handler did.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

CANCELLED: set[str] = set()
STARTED: dict[str, threading.Event] = {}


def started(job_id: str) -> threading.Event:
    return STARTED.setdefault(job_id, threading.Event())


async def wait_until_cancelled(job: dict[str, Any]) -> Any:
    """Runs until cancelled, and records that it was."""
    started(job["id"]).set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        CANCELLED.add(job["id"])
        raise
    return None


def sync_chunks(job: dict[str, Any]) -> Iterator[Any]:
    """A plain (sync) generator handler, run in a thread by the emulator."""
    for k in range(int(job["input"].get("n", 3))):
        time.sleep(0.001)
        yield f"chunk-{k}"


def tagged(job: dict[str, Any]) -> Any:
    """A sync handler whose output says which handler ran (for template swaps)."""
    return {"handler": "tagged", "input": job["input"]}


# -- handlers that try to take the server down with them (issue 14 item 3) -----------------


async def exits(job: dict[str, Any]) -> Any:
    """``sys.exit`` on the server's event loop."""
    sys.exit(f"handler of {job['id']} exits")


def interrupts(job: dict[str, Any]) -> Any:
    """``KeyboardInterrupt`` from a sync handler (in its thread)."""
    raise KeyboardInterrupt


async def exits_midstream(job: dict[str, Any]) -> AsyncIterator[Any]:
    """A streaming handler that exits after its first chunk."""
    yield "first"
    raise SystemExit(2)


# -- issue 16: results as the worker SDK reports them -----------------------------------------


def result_of_input(job: dict[str, Any]) -> Any:
    """Return ``input.result`` as it is: the test chooses the handler's return value."""
    return job["input"].get("result")


def big_output(job: dict[str, Any]) -> Any:
    """Return a string of ``input.bytes`` bytes (a result too large to report)."""
    return "x" * int(job["input"]["bytes"])


def big_chunks(job: dict[str, Any]) -> Iterator[Any]:
    """Yield one string chunk of ``input.bytes`` bytes, then ``"end"``."""
    yield "y" * int(job["input"]["bytes"])
    yield "end"
