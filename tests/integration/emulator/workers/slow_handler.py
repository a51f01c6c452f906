"""A slow RunPod worker whose progress can be watched from outside.

Every ``input.interval_ms`` it writes ``tick-<k>`` into ``input.dir`` (up to
``input.ticks`` ticks), so a test can see whether the handler is still running. When
its task is cancelled (the worker's reaction to a job-stop signal) it writes
``cancelled`` there and re-raises.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import runpod


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    data = job["input"]
    where = Path(data["dir"])
    ticks = int(data.get("ticks", 1))
    try:
        for k in range(ticks):
            (where / f"tick-{k}").write_text(job["id"])
            await asyncio.sleep(float(data.get("interval_ms", 100)) / 1000)
    except asyncio.CancelledError:
        (where / "cancelled").write_text(job["id"])
        raise
    return {"ticks": ticks}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
