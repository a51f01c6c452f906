"""Log output of the bridge's processes: plain text (the default) or one JSON object per
line (``--log-format json``), every line about a request carrying its context, and API
keys masked. Standard library only; imports nothing else from the package.

The convention for a log call about a request: its context fields (``request_id``,
``task_id``, ``job_id``, ``route``) reach the record either with ``extra=`` ::

    log.info("request %s submitted", rid, extra=request_fields(rid, job_id=job, route=r))

or, for everything an asyncio task (or a thread) logs while it handles one request, once
with :func:`log_context` / :func:`bind` (context variables follow asyncio tasks)::

    with log_context(request_id=rid, task_id=tid, route=r):
        ...
        bind(job_id=job.job_id)  # from here on, every line also names the job

Celery's own task lines get ``task_id`` from the task they are about.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

LOG_FORMATS = ("text", "json")
CONTEXT_FIELDS = ("request_id", "task_id", "job_id", "route")
"""The fields that tie a log line to a request, in the order they are shown."""

TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
MIN_SECRET_LENGTH = 8  # shorter "keys" (tests) are not masked: it would garble the text

_context: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar(
    "bridge_log_context", default=()
)
_secrets: set[str] = set()
# LogRecord's own attributes; anything else on a record came in through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "data",  # Celery's copy of a task line's arguments (task inputs): not repeated
}


def request_fields(
    request_id: str | None = None,
    task_id: str | None = None,
    job_id: str | None = None,
    route: str | None = None,
) -> dict[str, str]:
    """The ``extra=`` of a log call about a request (fields that are None are left out)."""
    fields = {"request_id": request_id, "task_id": task_id, "job_id": job_id, "route": route}
    return {k: v for k, v in fields.items() if v is not None}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add context fields to every line logged inside the block (this task or thread)."""
    token = _context.set(_merged(fields))
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add context fields for the rest of the current asyncio task (or thread)."""
    _context.set(_merged(fields))


def current_context() -> dict[str, Any]:
    """The context fields bound here (by :func:`log_context` or :func:`bind`)."""
    return dict(_context.get())


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it would appear in a formatted line (defence in depth: no
    log call should carry a key in the first place)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        _secrets.add(value)


def _merged(fields: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    merged = dict(_context.get())
    merged.update((k, v) for k, v in fields.items() if v is not None)
    return tuple(merged.items())


class ContextFilter(logging.Filter):
    """Puts the request's context fields on the record: ``extra=`` wins, then the bound
    context, then (``task_id`` only) the Celery task the line is about."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "task_id"):
            task_id = _celery_task_id(record)
            if task_id:
                record.task_id = task_id
        return True


def _celery_task_id(record: logging.LogRecord) -> str | None:
    data = getattr(record, "data", None)  # Celery's "Task …[id] received/succeeded" lines
    if isinstance(data, dict) and isinstance(data.get("id"), str):
        return str(data["id"])
    state = sys.modules.get("celery._state")  # never import Celery for this
    if state is None:
        return None
    task = state.get_current_task()
    request = getattr(task, "request", None) if task is not None else None
    task_id = getattr(request, "id", None)
    return task_id if isinstance(task_id, str) else None


def _mask(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "********")
    return text


class TextFormatter(logging.Formatter):
    """Celery's familiar line, the logger's name, then the context fields:
    ``[time: INFO/MainProcess] bridge.tracker: … [request_id=r1 job_id=j1 route=echo]``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if hasattr(record, k)]
        if fields:
            head, newline, rest = line.partition("\n")  # keep a traceback below the fields
            line = f"{head} [{' '.join(fields)}]{newline}{rest}"
        return _mask(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``process``, the context fields present, other ``extra=`` fields, and
    ``exc_info`` / ``stack_info`` as text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        for key in CONTEXT_FIELDS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return _mask(json.dumps(entry, default=str, ensure_ascii=False))


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``text`` or ``json``."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (one of {', '.join(LOG_FORMATS)})")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(
    log_format: str = "text", level: int | str = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Send every logger's lines to ``stream`` (stderr) in ``log_format``; replaces the
    root logger's handlers. Returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    return handler


def configure_celery(log_format: str) -> None:
    """Make Celery (worker or beat, in this process) log through :func:`configure`:
    a ``setup_logging`` receiver means Celery leaves logging to us, at its ``--loglevel``."""
    from celery import signals

    def setup(loglevel: int | str | None = None, **_: Any) -> None:
        configure(log_format, loglevel or "INFO")

    signals.setup_logging.connect(setup, weak=False, dispatch_uid="bridge.logs")
