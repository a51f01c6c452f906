"""Run the emulator in a background thread, for tests, benchmarks and the demo.

Example::

    from bridge.emulator.testing import running_emulator

    with running_emulator() as emu:
        print(emu.base_url, emu.stats("echo"))
        emu.set_faults("echo", error_rate=0.3, seed=7)    # the same 500s every run
        emu.fail_ops("echo", {"status": 404})             # every /status: 404
        emu.revoke_key(emu.add_key())                     # a key revoked at runtime
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from bridge.emulator.app import create_app, start_site, tls_context
from bridge.emulator.engine import Engine
from bridge.emulator.http import ENGINE
from bridge.emulator.security import KEYRING, KeyRing
from bridge.emulator.settings import EmulatorSettings


@dataclass
class EmulatorHandle:
    """A running emulator: its addresses, a valid key, and helpers for tests."""

    url: str
    api_key: str
    engine: Engine
    loop: asyncio.AbstractEventLoop
    _http: httpx.Client = field(repr=False)
    _keys: KeyRing = field(repr=False)
    verify: ssl.SSLContext | bool = field(default=True, repr=False)
    """What an https client must trust to reach it (its own certificate), else True."""

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
            verify=self.verify,
        )

    def set_faults(self, endpoint_id: str, **faults: Any) -> dict[str, Any]:
        """Set an endpoint's injected faults (see ``FaultConfig``); no arguments clears.
        Setting them restarts the fault sequence from its seed (``seed=``, else the
        server's ``fault_seed``, else random)."""
        response = self._http.put(f"/_emulator/faults/{endpoint_id}", json=faults)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def fail_ops(self, endpoint_id: str, ops: dict[str, int], **faults: Any) -> dict[str, Any]:
        """Make every request of the named queue operations answer an HTTP status, e.g.
        ``fail_ops("echo", {"status": 404, "status-sync": 404})`` for a vanished job;
        ``faults`` are other ``FaultConfig`` fields. ``set_faults(endpoint_id)`` clears."""
        return self.set_faults(endpoint_id, fail_ops=ops, **faults)

    def fault_counts(self, endpoint_id: str) -> dict[str, int]:
        """Faults injected on the endpoint so far, by kind (``dropped``, ``rate_limited``,
        ``error``, ``dropped_after``, ``fail_op``)."""
        counts: dict[str, int] = self.stats(endpoint_id)["faults_by_kind"]
        return counts

    def add_key(self, key: str | None = None) -> str:
        """Accept one more API key (a fresh random one by default) and return it: a key a
        test may revoke without locking itself out."""
        key = key or f"test-{secrets.token_urlsafe(16)}"
        self.call(self._keys.add, key)
        return key

    def revoke_key(self, key: str) -> None:
        """Revoke ``key`` through ``POST /_emulator/keys/revoke``, as a user deleting it in
        RunPod's console: it gets 401 everywhere from now on. Revoking this handle's own
        ``api_key`` breaks its HTTP helpers; revoke a key from :meth:`add_key` instead."""
        response = self._http.post("/_emulator/keys/revoke", json={"key": key})
        response.raise_for_status()

    def stats(self, endpoint_id: str) -> dict[str, Any]:
        """The endpoint's counters: submissions, cancels, purges, requests by operation …"""
        response = self._http.get(f"/_emulator/stats/{endpoint_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def workers(self, endpoint_id: str) -> list[dict[str, Any]]:
        """The endpoint's workers: ``id``, ``state``, ``external``, ``jobs``, ``crashes``
        and ``error`` (why it is unhealthy)."""
        response = self._http.get(f"/_emulator/workers/{endpoint_id}")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["workers"]
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
    """Start an emulator on 127.0.0.1 and an ephemeral port; stop it on exit. With
    ``tls_cert_file`` / ``tls_key_file`` it serves https and its handle's clients trust
    that certificate.

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
        start_site(app, settings.host, settings.port, tls_context(settings)), loop
    ).result(timeout=30)
    url = f"{settings.scheme}://{settings.host}:{port}"
    key = settings.accepted_keys()[0]
    verify: ssl.SSLContext | bool = True
    if settings.tls_cert_file is not None:
        verify = ssl.create_default_context(cafile=str(settings.tls_cert_file))
    http = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30, verify=verify
    )
    try:
        yield EmulatorHandle(
            url=url,
            api_key=key,
            engine=app[ENGINE],
            loop=loop,
            _http=http,
            _keys=app[KEYRING],
            verify=verify,
        )
    finally:
        http.close()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
