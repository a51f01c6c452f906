import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.emulator import handlers
from bridge.emulator.handlers import HandlerLoadError, load_handler, run_handler


async def run(
    handler: Any, job_input: Any, *, aggregate: bool = False
) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """The job-done body the handler's run produced, its chunks and its progress."""
    chunks: list[Any] = []
    progress: list[Any] = []
    done = await run_handler(
        handler,
        {"id": "j1", "input": job_input},
        on_chunk=chunks.append,
        on_progress=progress.append,
        worker_id="w1",
        aggregate=aggregate,
    )
    return done.body, chunks, progress


async def test_echo_returns_input() -> None:
    body, chunks, _ = await run(handlers.echo, {"a": 1})
    assert (body, chunks) == ({"output": {"a": 1}}, [])


async def test_echo_rejects_bad_sleep() -> None:
    body, _, _ = await run(handlers.echo, {"sleep_ms": "soon"})
    assert "sleep_ms must be a non-negative number" in json.loads(body["error"])["error_message"]


async def test_stream_yields_n_chunks_in_order() -> None:
    body, chunks, _ = await run(handlers.stream, {"n": 4, "interval_ms": 0})
    assert chunks == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
    assert body == {"output": []}  # return_aggregate_stream off: the SDK reports []


async def test_stream_aggregates_when_asked() -> None:
    body, chunks, _ = await run(handlers.stream, {"n": 2, "interval_ms": 0}, aggregate=True)
    assert body == {"output": chunks} == {"output": [{"i": 0}, {"i": 1}]}


async def test_raised_exception_is_runpods_json_error() -> None:
    body, _, _ = await run(handlers.fail, {"message": "boom"})
    assert set(body) == {"error"}
    error = json.loads(body["error"])
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


async def async_gen_raises(job: dict[str, Any]) -> AsyncIterator[Any]:
    yield "first"
    raise ValueError("gone wrong")


def returns(value: Any) -> Any:
    def handler(job: dict[str, Any]) -> Any:
        return value

    return handler


async def test_sync_handler_runs_in_thread_with_progress() -> None:
    body, _, progress = await run(sync_handler, {"x": 21})
    # The SDK takes "error" out and sends the rest of the dict as the output, whole.
    assert body == {"output": {"output": 42}, "error": "partial"}
    # the thread posts progress to the loop before its result, so it has run by now
    assert progress == ["half"]


# -- issue 16 item 3: the return value → job-done body, case by case (rp_job.run_job) --------


@pytest.mark.parametrize(
    ("returned", "body"),
    [
        pytest.param({"a": 1}, {"output": {"a": 1}}, id="dict"),
        pytest.param({}, {}, id="empty-dict-no-output"),
        pytest.param(None, {"output": None}, id="none"),
        pytest.param(True, {"output": True}, id="bool"),
        pytest.param([1, 2], {"output": [1, 2]}, id="list"),
        pytest.param("text", {"output": "text"}, id="string"),
        pytest.param({"error": "boom"}, {"error": "boom"}, id="error-only"),
        pytest.param({"error": "boom", "k": 1}, {"output": {"k": 1}, "error": "boom"},
                     id="error-and-rest"),
        pytest.param({"output": 5, "error": "e"}, {"output": {"output": 5}, "error": "e"},
                     id="output-key-is-not-unwrapped"),
        pytest.param({"error": None, "k": 1}, {"output": {"k": 1}}, id="error-none"),
        pytest.param({"error": None}, {}, id="error-none-alone"),
        pytest.param({"error": ""}, {}, id="error-empty-string"),
        pytest.param({"error": 0, "k": 1}, {"output": {"k": 1}}, id="error-zero"),
        pytest.param({"error": False}, {}, id="error-false"),
        pytest.param({"error": {"code": 1}}, {"error": {"code": 1}}, id="error-dict-sent-as-is"),
        pytest.param({"refresh_worker": True, "k": 1}, {"output": {"k": 1}, "stopPod": True},
                     id="refresh-worker"),
        pytest.param({"refresh_worker": False, "k": 1}, {"output": {"k": 1}},
                     id="refresh-worker-false"),
        pytest.param({"refresh_worker": True}, {"stopPod": True}, id="refresh-worker-alone"),
    ],
)  # fmt: skip
async def test_return_values_become_the_sdks_job_done_body(returned: Any, body: Any) -> None:
    assert (await run(returns(returned), {}))[0] == body


async def test_a_yielded_error_stops_the_stream_as_a_plain_string() -> None:
    body, chunks, _ = await run(sync_gen, {}, aggregate=True)
    assert chunks == [1]
    assert body == {"error": "stop here"}  # the aggregate is lost, as in the SDK


async def test_a_generator_exception_is_one_plain_string() -> None:
    body, chunks, _ = await run(async_gen_raises, {}, aggregate=True)
    assert chunks == ["first"]
    error = body["error"]
    assert error.startswith("handler: gone wrong \ntraceback: Traceback")
    assert "ValueError: gone wrong" in error
    with pytest.raises(json.JSONDecodeError):
        json.loads(error)


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
    body, _, _ = await run(handler, {})
    if handler is exits_midstream:  # a generator: the SDK's plain string
        assert body["error"].startswith("handler: 2 \ntraceback:")
        assert f"{kind}: 2" in body["error"]
    else:
        assert json.loads(body["error"])["error_type"] == f"<class '{kind}'>"
