"""Fixtures both tiers share. The services the integration tier needs (Redis, RabbitMQ,
the emulator on a socket) live in tests/integration/conftest.py: the unit tier opens no
sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

# Imported here, first: pytest puts each test directory on sys.path, and once
# tests/integration is there its bridge/ folder would be found as a namespace package
# named ``bridge`` in place of the real one.
import bridge  # noqa: F401


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
