"""Run the emulator in a background thread, for tests, benchmarks and the demo.

Example::

    from bridge.emulator.testing import running_emulator

    with running_emulator() as emu:
        print(emu.base_url, emu.stats("echo"))
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from bridge.emulator.app import create_app, start_site
from bridge.emulator.engine import Engine
from bridge.emulator.http import ENGINE
from bridge.emulator.settings import EmulatorSettings


@dataclass
class EmulatorHandle:
    """A running emulator: its addresses, a valid key, and helpers for tests."""

    url: str
    api_key: str
    engine: Engine
    loop: asyncio.AbstractEventLoop
    _http: httpx.Client = field(repr=False)

    @property
    def base_url(self) -> str:
        """The queue API base, what RunPod calls ``endpoint_url_base``."""
        return f"{self.url}/v2"

    def client(self, key: str | None = None) -> httpx.Client:
        """A plain httpx client on the queue API base, authenticated with ``key``."""
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key or self.api_key}"},
            timeout=30,
        )

    def set_faults(self, endpoint_id: str, **faults: Any) -> dict[str, Any]:
        """Set an endpoint's injected faults (see ``FaultConfig``); no arguments clears."""
        response = self._http.put(f"/_emulator/faults/{endpoint_id}", json=faults)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stats(self, endpoint_id: str) -> dict[str, Any]:
        """The endpoint's counters: submissions, cancels, purges, requests by operation …"""
        response = self._http.get(f"/_emulator/stats/{endpoint_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def call(self, func: Any, *args: Any) -> Any:
        """Run ``func(*args)`` on the server's loop (to read or change engine state)."""

        async def run() -> Any:
            return func(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)


def wait_until(check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Wait, bounded, for a condition the server reaches on its own (integration tests)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        time.sleep(interval)


@contextmanager
def running_emulator(
    settings: EmulatorSettings | None = None, **overrides: Any
) -> Iterator[EmulatorHandle]:
    """Start an emulator on 127.0.0.1 and an ephemeral port; stop it on exit.

    Args:
        settings: full settings; by default ``EmulatorSettings.load(**overrides)``.
        **overrides: settings fields to change from the defaults.
    """
    if settings is None:
        settings = EmulatorSettings.load(**{"host": "127.0.0.1", "port": 0, **overrides})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="emulator", daemon=True)
    thread.start()
    app = create_app(settings)
    runner, port = asyncio.run_coroutine_threadsafe(
        start_site(app, settings.host, settings.port), loop
    ).result(timeout=30)
    url = f"http://{settings.host}:{port}"
    key = settings.accepted_keys()[0]
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    try:
        yield EmulatorHandle(url=url, api_key=key, engine=app[ENGINE], loop=loop, _http=http)
    finally:
        http.close()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
