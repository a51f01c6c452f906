"""A streaming RunPod worker: an async generator, with ``return_aggregate_stream``.

Yields ``input.n`` chunks ``{"i": k}``, one every ``input.interval_ms`` milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import runpod


async def handler(job: dict[str, Any]) -> AsyncIterator[dict[str, int]]:
    data = job["input"]
    for k in range(int(data.get("n", 3))):
        await asyncio.sleep(float(data.get("interval_ms", 50)) / 1000)
        yield {"i": k}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
