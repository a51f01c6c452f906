"""Handlers the client suite's emulator loads by import path (the seed examples' models)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any


async def imagegen(job: dict[str, Any]) -> dict[str, Any]:
    """A stand-in image model: a URL derived from the request, after ``steps`` ms."""
    data = job["input"]
    await asyncio.sleep(min(float(data.get("steps", 1)), 200) / 1000)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    return {"image_url": f"https://images.example/{digest}.png", "prompt": data.get("prompt")}


async def storyteller(job: dict[str, Any]) -> AsyncIterator[dict[str, str]]:
    """A stand-in text model streaming its story word by word."""
    words = f"Once upon a time, {job['input'].get('prompt', 'someone')} lived happily.".split()
    for word in words:
        await asyncio.sleep(0.002)
        yield {"text": word + " "}
