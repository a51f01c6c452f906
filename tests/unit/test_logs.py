"""Log lines: plain text or JSON, each carrying its request's context, keys masked."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from bridge import logs


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A private logger whose lines go to a string, through a bridge handler."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_the_basics_and_the_extra_fields(capture: tuple) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.formatter("json"))
    fields = logs.request_fields("r-1", task_id="t-1", job_id="j-1", route="echo")
    logger.info("request %s %s", "r-1", "COMPLETED", extra={**fields, "status": "COMPLETED"})
    (line,) = json_lines(stream)
    assert line["message"] == "request r-1 COMPLETED"
    assert line["level"] == "INFO"
    assert line["logger"] == logger.name
    assert str(line["ts"]).endswith("+00:00")
    assert {k: line[k] for k in logs.CONTEXT_FIELDS} == {
        "request_id": "r-1",
        "task_id": "t-1",
        "job_id": "j-1",
        "route": "echo",
    }
    assert line["status"] == "COMPLETED"


def test_request_fields_leave_out_what_is_unknown() -> None:
    assert logs.request_fields("r-1", route="echo") == {"request_id": "r-1", "route": "echo"}


def test_bound_context_follows_each_asyncio_task_and_no_further(capture: tuple) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.formatter("json"))

    async def follow(request_id: str, job_id: str) -> None:
        with logs.log_context(request_id=request_id, route="echo"):
            logger.info("accepted")
            await asyncio.sleep(0)  # the other request's task runs in between
            logs.bind(job_id=job_id)
            logger.info("submitted")

    async def main() -> None:
        await asyncio.gather(follow("r-1", "j-1"), follow("r-2", "j-2"))

    asyncio.run(main())
    logger.info("no request")
    lines = json_lines(stream)
    by_request = {(x.get("request_id"), x["message"]): x.get("job_id") for x in lines}
    assert by_request == {
        ("r-1", "accepted"): None,
        ("r-2", "accepted"): None,
        ("r-1", "submitted"): "j-1",
        ("r-2", "submitted"): "j-2",
        (None, "no request"): None,
    }
    assert logs.current_context() == {}


def test_extra_wins_over_the_bound_context(capture: tuple) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.formatter("json"))
    with logs.log_context(request_id="outer", route="echo"):
        logger.info("x", extra={"request_id": "inner"})
    (line,) = json_lines(stream)
    assert (line["request_id"], line["route"]) == ("inner", "echo")


def test_celery_task_lines_carry_their_task_id(capture: tuple) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.formatter("json"))
    context = {"id": "t-9", "name": "bridge.run", "kwargs": "{'input': {'p': 1}}"}
    logger.info("Task %(name)s[%(id)s] received", context, extra={"data": context})
    (line,) = json_lines(stream)
    assert line["task_id"] == "t-9"
    assert line["message"] == "Task bridge.run[t-9] received"
    assert "data" not in line  # the task's arguments are not repeated in every line


def test_text_line_names_logger_and_context_before_a_traceback(capture: tuple) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.formatter("text"))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed", extra=logs.request_fields("r-1", job_id="j-1"))
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith(f"{logger.name}: failed [request_id=r-1 job_id=j-1]")
    assert "ERROR/MainProcess]" in first
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: boom"


def test_json_exception_is_one_line(capture: tuple) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.formatter("json"))
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("failed")
    (line,) = json_lines(stream)
    assert str(line["exc_info"]).endswith("ValueError: bad")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_registered_keys_are_masked_everywhere_in_a_line(capture: tuple, log_format: str) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.formatter(log_format))
    key = f"rpa_{uuid.uuid4().hex.upper()}"
    logs.register_secret(key)
    logs.register_secret("short")  # too short to be a real key: left alone
    try:
        raise PermissionError(f"401 for Bearer {key}")
    except PermissionError:
        logger.exception("call with %s failed (a short answer)", key, extra={"route": key})
    text = stream.getvalue()
    assert key not in text
    assert text.count("********") >= 3
    assert "a short answer" in text


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logs.formatter("xml")


def test_configure_replaces_the_root_handlers() -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        handler = logs.configure("json", "warning", stream=stream)
        assert root.handlers == [handler]
        assert root.level == logging.WARNING
        logging.getLogger("bridge.test").warning("hello", extra={"route": "echo"})
        logging.getLogger("bridge.test").info("not shown")
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
        logging.captureWarnings(False)
    (line,) = json_lines(stream)
    assert (line["message"], line["route"]) == ("hello", "echo")
