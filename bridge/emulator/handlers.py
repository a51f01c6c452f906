"""Handlers: the built-in ones, loading the allowed ones, and running any of them the way
runpod-python 1.12's worker does.

A handler follows RunPod's worker contract: ``handler(job)`` receives
``{"id": ..., "input": ...}``; a (sync or async) generator streams its yields. What it
returns or raises becomes the body the worker SDK POSTs to job-done (``rp_job.py``
``run_job`` / ``handle_job``), built here exactly as the SDK builds it and judged by the
platform's rules in :mod:`bridge.emulator.results`:

- a dict: its ``error`` and ``refresh_worker`` keys are taken out; the rest (``{}`` means
  none) is the output; a truthy ``error`` is sent as the error (the job FAILS, keeping that
  output); a truthy ``refresh_worker`` asks for a fresh worker (``stopPod``);
- anything else (``None`` included) is the output as it is;
- an exception: ``error`` is a JSON document (type, message, traceback, hostname, worker);
- a generator: each yield is a chunk; a yielded dict with a truthy ``error`` stops it and
  fails the job with ``str(error)``; an exception fails it with the plain string
  ``"handler: <message> \ntraceback: <traceback>"``; otherwise the output is the list of
  yields with ``return_aggregate_stream``, else ``[]``.

Sync handlers run in a thread so they never block the event loop. Unlike the SDK (which
catches ``Exception`` only), ``SystemExit`` and ``KeyboardInterrupt`` fail the job too: a
handler must never stop the server.
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


@dataclass(frozen=True)
class JobDone:
    """What the worker SDK POSTs to job-done for one job (``is_stream``: a generator)."""

    body: dict[str, Any]
    is_stream: bool = False


async def run_handler(
    handler: Handler,
    job: dict[str, Any],
    *,
    on_chunk: Callable[[Any], None],
    on_progress: Callable[[Any], None],
    worker_id: str,
    aggregate: bool = False,
) -> JobDone:
    """Run ``handler`` on ``job`` as runpod-python's worker does; chunks of a generator go
    to ``on_chunk`` as they come; ``aggregate`` is ``return_aggregate_stream``.

    Returns the job-done body; an exception (``SystemExit`` and ``KeyboardInterrupt``
    included) becomes the SDK's error body. Cancellation propagates.
    """
    loop = asyncio.get_running_loop()

    def report(progress: Any) -> None:  # may be called from a handler's thread
        loop.call_soon_threadsafe(on_progress, progress)

    token = _progress.set(report)
    try:
        if inspect.isasyncgenfunction(handler) or inspect.isgeneratorfunction(handler):
            return JobDone(await _stream(handler, job, on_chunk, aggregate), is_stream=True)
        try:
            if inspect.iscoroutinefunction(handler):
                result = await handler(job)
            else:
                result = await asyncio.to_thread(contextvars.copy_context().run, handler, job)
                if inspect.isawaitable(result):
                    result = await _await(result)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # SystemExit from a handler must not end the server
            return JobDone({"error": _error_json(exc, worker_id)})
        return JobDone(job_result(result))
    finally:
        _progress.reset(token)


def job_result(value: Any) -> dict[str, Any]:
    """The job-done body for a handler's return value (``rp_job.run_job``)."""
    if isinstance(value, dict):
        rest = dict(value)
        error = rest.pop("error", None)
        refresh = rest.pop("refresh_worker", None)
        body: dict[str, Any] = {"output": rest}
        if error:
            body["error"] = error
        if refresh:
            body["stopPod"] = True
    else:
        body = {"output": value}
    if body.get("output") == {}:
        del body["output"]
    return body


async def _await(value: Awaitable[Any]) -> Any:
    return await value


async def _stream(
    handler: Handler, job: dict[str, Any], on_chunk: Callable[[Any], None], aggregate: bool
) -> dict[str, Any]:
    """Drain a generator handler as ``rp_job.handle_job`` does; return the job-done body."""
    yields: list[Any] = []
    try:
        async for chunk in _chunks(handler, job):
            if isinstance(chunk, dict) and chunk.get("error"):
                return {"error": str(chunk["error"])}
            if aggregate:
                yields.append(chunk)
            on_chunk(chunk)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # as the SDK's run_job_generator: one plain string
        trace = "".join(traceback.format_exception(exc))
        return {"error": f"handler: {exc} \ntraceback: {trace}"}
    return {"output": yields}


async def _chunks(handler: Handler, job: dict[str, Any]) -> AsyncIterator[Any]:
    if inspect.isasyncgenfunction(handler):
        async for chunk in handler(job):
            yield chunk
        return
    gen: Iterator[Any] = handler(job)
    done: Any = object()
    while True:
        chunk = await asyncio.to_thread(next, gen, done)
        if chunk is done:
            return
        yield chunk


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
