"""Fixtures for the emulator's integration tests: HTTP clients on a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bridge.emulator.testing import EmulatorHandle


@pytest.fixture
def api(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    """A client on the session emulator's queue API base."""
    with emulator.client() as client:
        yield client
