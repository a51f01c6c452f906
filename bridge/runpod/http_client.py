"""The aiohttp session the asyncio client runs on.

``ClientSession()`` is a factory (aiohttp forbids subclassing its session) returning a
plain :class:`aiohttp.ClientSession` with defaults fit for many concurrent jobs. Any
``aiohttp.ClientSession`` works with :class:`~bridge.runpod.AsyncioEndpoint`; the API key
is sent per request and never stored on the session.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from bridge.runpod._config import USER_AGENT

__all__ = ["ClientSession"]


def ClientSession(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
    """Create an aiohttp session for the asyncio client; call it inside a coroutine.

    Defaults, each overridable by keyword: no limit on concurrent connections (each job
    waiting on a held status request keeps one open), no total timeout (the client sets
    per-request read timeouts), and this library's ``User-Agent``. Close it with
    ``await session.close()`` or use it as ``async with ClientSession() as session``.

    Args:
        *args: passed to :class:`aiohttp.ClientSession`.
        **kwargs: passed to :class:`aiohttp.ClientSession`.

    Returns:
        A new, open :class:`aiohttp.ClientSession`.
    """
    kwargs.setdefault("connector", aiohttp.TCPConnector(limit=0))
    kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=10))
    kwargs["headers"] = {"User-Agent": USER_AGENT, **dict(kwargs.get("headers") or {})}
    return aiohttp.ClientSession(*args, **kwargs)
