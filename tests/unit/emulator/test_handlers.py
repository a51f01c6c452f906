import json
from typing import Any

import pytest

from bridge.emulator import handlers
from bridge.emulator.handlers import HandlerLoadError, load_handler, run_handler


async def run(handler: Any, job_input: Any) -> tuple[handlers.Outcome, list[Any], list[Any]]:
    chunks: list[Any] = []
    progress: list[Any] = []
    outcome = await run_handler(
        handler,
        {"id": "j1", "input": job_input},
        on_chunk=chunks.append,
        on_progress=progress.append,
        worker_id="w1",
    )
    return outcome, chunks, progress


async def test_echo_returns_input() -> None:
    outcome, chunks, _ = await run(handlers.echo, {"a": 1})
    assert (outcome.output, outcome.has_output, outcome.error, chunks) == ({"a": 1}, True, None, [])


async def test_echo_rejects_bad_sleep() -> None:
    outcome, _, _ = await run(handlers.echo, {"sleep_ms": "soon"})
    assert outcome.error is not None
    assert "sleep_ms must be a non-negative number" in json.loads(outcome.error)["error_message"]


async def test_stream_yields_n_chunks_in_order() -> None:
    outcome, chunks, _ = await run(handlers.stream, {"n": 4, "interval_ms": 0})
    assert chunks == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
    assert outcome.streamed
    assert outcome.error is None


async def test_raised_exception_is_runpods_json_error() -> None:
    outcome, _, _ = await run(handlers.fail, {"message": "boom"})
    assert outcome.error is not None
    error = json.loads(outcome.error)
    assert error["error_message"] == "boom"
    assert error["error_type"] == "<class 'RuntimeError'>"
    assert error["worker_id"] == "w1"
    assert "Traceback" in error["error_traceback"]


def sync_handler(job: dict[str, Any]) -> Any:
    handlers.progress_update(job, "half")
    return {"output": job["input"]["x"] * 2, "error": "partial"}


def sync_gen(job: dict[str, Any]) -> Any:
    yield 1
    yield {"error": "stop here"}
    yield 3


def empty_dict(job: dict[str, Any]) -> Any:
    return {}


async def test_sync_handler_runs_in_thread_with_progress_and_error_with_output() -> None:
    outcome, _, progress = await run(sync_handler, {"x": 21})
    assert (outcome.output, outcome.error) == (42, "partial")
    # the thread posts progress to the loop before its result, so it has run by now
    assert progress == ["half"]


async def test_sync_generator_stops_at_error_chunk() -> None:
    outcome, chunks, _ = await run(sync_gen, {})
    assert chunks == [1]
    assert outcome.error == "stop here"


async def test_empty_dict_means_no_output() -> None:
    outcome, _, _ = await run(empty_dict, {})
    assert not outcome.has_output


def test_load_builtin_and_import_path() -> None:
    assert load_handler("echo") is handlers.echo
    assert load_handler("bridge.emulator.handlers:fail") is handlers.fail


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nocolon", "neither a built-in"),
        ("no.such.module:f", "cannot load handler"),
        ("bridge.emulator.handlers:missing", "cannot load handler"),
        ("bridge.emulator.handlers:BUILTIN_HANDLERS", "not callable"),
    ],
)
def test_load_errors_are_clear(name: str, message: str) -> None:
    with pytest.raises(HandlerLoadError, match=message):
        load_handler(name)
