"""Fixtures for the emulator's integration tests: HTTP clients on a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bridge.emulator.testing import EmulatorHandle


def client_for(handle: EmulatorHandle, key: str | None = None) -> httpx.Client:
    """A plain httpx client on the queue API base, authenticated with ``key``."""
    return httpx.Client(
        base_url=handle.base_url,
        headers={"Authorization": f"Bearer {key or handle.api_key}"},
        timeout=30,
    )


@pytest.fixture
def api(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    with client_for(emulator) as client:
        yield client
