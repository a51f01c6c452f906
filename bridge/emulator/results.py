"""What the platform makes of a worker's report: the rules RunPod applies to a job-done
body and to a stream chunk, written once for simulated and external workers alike.

A worker reports with the body runpod-python 1.12 POSTs to job-done (``rp_http.py``):
``{"output": X}``, ``{"output": X, "error": "msg"}``, ``{"error": "<text>"}``, any of them
with ``"stopPod": true``, or a progress update ``{"status": "IN_PROGRESS", "output": P}``.
The platform (sources in docs/emulator.md):

- refuses a body over ``result_max_bytes`` (about 20 MB) with HTTP 400; runpod-python only
  logs that, and the job shows ``COMPLETED`` without output (runpod-python issue #309);
- ends the job ``FAILED`` when ``error`` is a non-empty string, keeping ``output`` if sent;
- cannot take a non-string ``error`` (issue #299: the job ends ``COMPLETED`` without
  output), handled here like any other refused body;
- otherwise ends it ``COMPLETED``, with ``output`` exactly as sent when the key is present.

A stream chunk over ``stream_chunk_max_bytes`` (1 MB) is split into several (RunPod's
operation reference: "Larger outputs will be split across multiple chunks"). How the
platform cuts is not documented: here a string is cut into consecutive substrings and any
other value is cut as its JSON text, so joining the pieces gives the text back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

COMPLETED = "COMPLETED"
FAILED = "FAILED"
PROGRESS = "IN_PROGRESS"


@dataclass(frozen=True)
class Verdict:
    """The platform's reading of one job-done body.

    ``status`` is ``COMPLETED``, ``FAILED`` or ``IN_PROGRESS`` (a progress update);
    ``refused`` says why the body was refused (the worker gets 400, and a final report
    still ends the job, ``COMPLETED`` without output).
    """

    status: str
    output: Any = None
    has_output: bool = False
    error: str | None = None
    stop_pod: bool = False
    refused: str | None = None


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as runpod-python sends it: ``json.dumps(ensure_ascii=False)``."""
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def judge(body: Any, size: int, limit: int) -> Verdict:
    """Read a job-done ``body`` of ``size`` bytes (``limit``: the largest accepted)."""
    progress = isinstance(body, dict) and body.get("status") == PROGRESS
    status = PROGRESS if progress else COMPLETED
    if size > limit:
        return Verdict(status, refused=f"result of {size} bytes exceeds the {limit}-byte limit")
    if not isinstance(body, dict):
        return Verdict(status, refused="job-done body must be a JSON object")
    if progress:
        return Verdict(PROGRESS, output=body.get("output"), has_output="output" in body)
    stop_pod = body.get("stopPod") is True
    error = body.get("error")
    if error and not isinstance(error, str):
        return Verdict(COMPLETED, stop_pod=stop_pod, refused="'error' must be a string")
    return Verdict(
        FAILED if error else COMPLETED,
        output=body.get("output"),
        has_output="output" in body,
        error=error or None,
        stop_pod=stop_pod,
    )


def split_chunk(value: Any, limit: int) -> list[Any]:
    """``value`` as the chunks the platform delivers: itself when its JSON fits in
    ``limit`` bytes, else pieces of its text (a string's own, else its JSON) that each fit."""
    if encoded_size(value) <= limit:
        return [value]
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    pieces: list[str] = []
    start = 0
    while start < len(text):
        count = min(len(text) - start, limit)
        while True:
            piece = text[start : start + count]
            size = encoded_size(piece)
            if size <= limit or count == 1:
                break
            # Shrink in proportion (escapes and multi-byte characters make a character
            # cost more than a byte); strictly smaller each time, so this ends.
            count = max(1, min(count - 1, count * limit // size))
        pieces.append(piece)
        start += count
    return pieces
