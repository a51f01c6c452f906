"""Handlers for the README test's emulator: stand-ins for the models the README's client
examples talk to (an image model, and a text model that streams)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any


async def image(job: dict[str, Any]) -> dict[str, Any]:
    """An image URL derived from the request, after ``steps`` ms (at most 100)."""
    data = job["input"]
    await asyncio.sleep(min(float(data.get("steps", 1)), 100) / 1000)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    return {"image_url": f"https://images.example/{digest}.png", "prompt": data.get("prompt")}


async def story(job: dict[str, Any]) -> AsyncIterator[dict[str, str]]:
    """A story about the prompt, streamed word by word."""
    for word in f"Once upon a time, {job['input'].get('prompt', 'someone')} lived.".split():
        await asyncio.sleep(0.002)
        yield {"text": word + " "}
