"""Handlers: the built-in ones, loading the allowed ones, and running any of them.

A handler follows RunPod's worker contract: ``handler(job)`` receives
``{"id": ..., "input": ...}``; its return value is the output; a returned
``{"error": "..."}`` or a raised exception fails the job; a (sync or async) generator
streams its yields. Sync handlers run in a thread so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import json
import socket
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.emulator.settings import BUILTIN_HANDLERS

Handler = Callable[[dict[str, Any]], Any]
_progress: contextvars.ContextVar[Callable[[Any], None]] = contextvars.ContextVar("progress")


class HandlerLoadError(Exception):
    """A template's handler path cannot be imported."""


# -- built-in handlers ---------------------------------------------------------------


async def echo(job: dict[str, Any]) -> Any:
    """Return the input unchanged, after ``input.sleep_ms`` milliseconds if given.

    ``input.progress`` (any value) is sent as a progress update before the sleep.
    """
    data = job["input"]
    if isinstance(data, dict):
        if "progress" in data:
            progress_update(job, data["progress"])
        delay = _number(data.get("sleep_ms", 0), "sleep_ms")
        if delay:
            await asyncio.sleep(delay / 1000)
    return data


async def stream(job: dict[str, Any]) -> AsyncIterator[dict[str, int]]:
    """Yield ``input.n`` chunks ``{"i": k}``, one every ``input.interval_ms`` ms."""
    data = job["input"] if isinstance(job["input"], dict) else {}
    count = int(_number(data.get("n", 3), "n"))
    interval = _number(data.get("interval_ms", 10), "interval_ms") / 1000
    for k in range(count):
        if interval:
            await asyncio.sleep(interval)
        yield {"i": k}


def fail(job: dict[str, Any]) -> Any:
    """Raise, so that the job ends FAILED (message from ``input.message`` if given)."""
    data = job["input"] if isinstance(job["input"], dict) else {}
    raise RuntimeError(str(data.get("message", "the fail handler always fails")))


def progress_update(job: dict[str, Any], progress: Any) -> None:
    """Report progress from inside a handler, like ``runpod.serverless.progress_update``:
    ``/status`` shows ``progress`` as the job's ``output`` while it runs."""
    del job  # the job is known from context; the argument keeps RunPod's signature
    report = _progress.get(None)
    if report is not None:
        report(progress)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"input.{name} must be a non-negative number, got {value!r}")
    return float(value)


# -- loading -------------------------------------------------------------------------


def load_handler(name: str, allowed: Mapping[str, str] = BUILTIN_HANDLERS) -> Handler:
    """Resolve a template's ``imageName`` through ``allowed`` (name -> import path): only
    a handler configured at startup can ever be imported, whatever a template says."""
    path = allowed.get(name)
    if path is None:
        raise HandlerLoadError(
            f"handler {name!r} is not one this emulator may run ({', '.join(allowed)})"
        )
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        handler = getattr(module, attr)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # whatever its import does
        raise HandlerLoadError(f"cannot load handler {path!r}: {exc!r}") from exc
    if not callable(handler):
        raise HandlerLoadError(f"handler {path!r} is not callable")
    return handler  # type: ignore[no-any-return]


# -- running -------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a handler run produced: output and/or error (an error means FAILED)."""

    output: Any = None
    error: str | None = None
    has_output: bool = False
    streamed: bool = False


async def run_handler(
    handler: Handler,
    job: dict[str, Any],
    *,
    on_chunk: Callable[[Any], None],
    on_progress: Callable[[Any], None],
    worker_id: str,
) -> Outcome:
    """Run ``handler`` on ``job``; chunks of a generator go to ``on_chunk`` as they come.

    Returns the outcome; exceptions from the handler, ``SystemExit`` and
    ``KeyboardInterrupt`` included, become a FAILED outcome whose error is the JSON string
    RunPod's worker sends: a handler can fail its job, never stop the server.
    Cancellation propagates.
    """
    loop = asyncio.get_running_loop()

    def report(progress: Any) -> None:  # may be called from a handler's thread
        loop.call_soon_threadsafe(on_progress, progress)

    token = _progress.set(report)
    try:
        if inspect.isasyncgenfunction(handler):
            return await _drain_async(handler(job), on_chunk)
        if inspect.isgeneratorfunction(handler):
            return await _drain_sync(handler(job), on_chunk)
        if inspect.iscoroutinefunction(handler):
            result = await handler(job)
        else:
            result = await asyncio.to_thread(contextvars.copy_context().run, handler, job)
            if inspect.isawaitable(result):
                result = await _await(result)
        return _from_return(result)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # SystemExit from a handler must not end the server
        return Outcome(error=_error_json(exc, worker_id))
    finally:
        _progress.reset(token)


async def _await(value: Awaitable[Any]) -> Any:
    return await value


async def _drain_async(gen: AsyncIterator[Any], on_chunk: Callable[[Any], None]) -> Outcome:
    async for chunk in gen:
        if _is_error_chunk(chunk):
            return Outcome(error=str(chunk["error"]), streamed=True)
        on_chunk(chunk)
    return Outcome(streamed=True)


async def _drain_sync(gen: Iterator[Any], on_chunk: Callable[[Any], None]) -> Outcome:
    done: Any = object()
    while True:
        chunk = await asyncio.to_thread(next, gen, done)
        if chunk is done:
            return Outcome(streamed=True)
        if _is_error_chunk(chunk):
            return Outcome(error=str(chunk["error"]), streamed=True)
        on_chunk(chunk)


def _is_error_chunk(chunk: Any) -> bool:
    return isinstance(chunk, dict) and bool(chunk.get("error"))


def _from_return(result: Any) -> Outcome:
    if isinstance(result, dict) and "error" in result:
        extra = {k: v for k, v in result.items() if k not in ("error", "refresh_worker")}
        output = extra.get("output", extra or None)
        return Outcome(output=output, error=str(result["error"]), has_output=output is not None)
    if isinstance(result, dict) and result.get("refresh_worker") is not None:
        result = {k: v for k, v in result.items() if k != "refresh_worker"}
    if result is None or result == {}:
        return Outcome()
    return Outcome(output=result, has_output=True)


def _error_json(exc: BaseException, worker_id: str) -> str:
    """The error string RunPod's worker reports for an exception (a JSON document)."""
    return json.dumps(
        {
            "error_type": str(type(exc)),
            "error_message": str(exc),
            "error_traceback": "".join(traceback.format_exception(exc)),
            "hostname": socket.gethostname(),
            "worker_id": worker_id,
            "runpod_version": "bridge-emulator",
        }
    )
