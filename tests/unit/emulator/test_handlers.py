import json
import sys
from collections.abc import Iterator
from pathlib import Path
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


def test_load_builtin_and_allowed_names() -> None:
    assert load_handler("echo") is handlers.echo
    assert load_handler("mine", {"mine": "bridge.emulator.handlers:fail"}) is handlers.fail


@pytest.mark.parametrize(
    ("name", "allowed", "message"),
    [
        # An import path is never resolved unless it is an allowed name (issue 14 item 3).
        ("subprocess:getoutput", {}, "not one this emulator may run"),
        ("bridge.emulator.handlers:fail", {}, "not one this emulator may run"),
        ("broken", {"broken": "no.such.module:f"}, "cannot load handler"),
        ("missing", {"missing": "bridge.emulator.handlers:missing"}, "cannot load handler"),
        ("data", {"data": "bridge.emulator.handlers:BUILTIN_HANDLERS"}, "not callable"),
        ("exits", {"exits": "exits_on_import:f"}, "SystemExit"),
    ],
)
def test_load_errors_are_clear(
    name: str,
    allowed: dict[str, str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HandlerLoadError, match=message):
        load_handler(name, allowed)


def exits(job: dict[str, Any]) -> Any:
    sys.exit(f"bye from {job['id']}")


async def interrupts(job: dict[str, Any]) -> Any:
    raise KeyboardInterrupt


def exits_midstream(job: dict[str, Any]) -> Iterator[int]:
    yield 1
    raise SystemExit(2)


@pytest.mark.parametrize(
    ("handler", "kind"),
    [(exits, "SystemExit"), (interrupts, "KeyboardInterrupt"), (exits_midstream, "SystemExit")],
)
async def test_exits_and_interrupts_fail_the_job_not_the_server(handler: Any, kind: str) -> None:
    """Issue 14 item 3: ``sys.exit`` in a handler killed the emulator."""
    outcome, _, _ = await run(handler, {})
    assert outcome.error is not None
    assert json.loads(outcome.error)["error_type"] == f"<class '{kind}'>"
