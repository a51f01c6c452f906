"""The unit tier opens no network connections: any attempt fails the test."""

from __future__ import annotations

import socket
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"unit tests must not open network connections ({address!r})")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
