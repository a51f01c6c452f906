"""A plain (non-streaming) RunPod worker: returns its input with a marker.

Run as a script by ``test_external_worker.py``; configured by RunPod's own
``RUNPOD_WEBHOOK_*`` environment variables, exactly as on the platform.
"""

from __future__ import annotations

from typing import Any

import runpod


def handler(job: dict[str, Any]) -> dict[str, Any]:
    return {"echo": job["input"], "handled_by": "plain_handler"}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
