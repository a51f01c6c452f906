"""The client suite's emulators and the two client flavours behind one test interface.

``client`` is parametrised over ``sync`` (``Endpoint``/``Job`` on httpx, called from a
worker thread) and ``async`` (``AsyncioEndpoint``/``AsyncioJob`` on aiohttp), so every
contract test runs against both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from client_suite import AsyncClient, Client, SyncClient

from bridge.emulator.settings import EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator
from bridge.runpod.http_client import ClientSession

FAST: dict[str, Any] = {"workersMax": 50, "scalerType": "REQUEST_COUNT", "scalerValue": 1}


@pytest.fixture(scope="session")
def client_emulator() -> Iterator[EmulatorHandle]:
    """An emulator for the client suite: built-ins plus the seed examples' models, a
    ``flaky`` endpoint for fault injection and a ``short`` one with a 100 ms execution
    timeout. Rate limits are off here (they have their own test)."""
    handlers = {
        "imagegen": "client_test_handlers:imagegen",
        "storyteller": "client_test_handlers:storyteller",
    }
    templates = [
        TemplateConfig(id=name, imageName=name)
        for name in ("echo", "stream", "fail", "external", *handlers)
    ]
    endpoints = [
        EndpointConfig(id="echo", templateId="echo", **FAST),
        EndpointConfig(id="stream", templateId="stream", returnAggregateStream=True, **FAST),
        EndpointConfig(id="fail", templateId="fail", **FAST),
        EndpointConfig(id="external", templateId="external", workersMax=0),
        EndpointConfig(id="flaky", templateId="echo", **FAST),
        EndpointConfig(id="short", templateId="echo", executionTimeoutMs=100, **FAST),
        EndpointConfig(id="imagegen", templateId="imagegen", **FAST),
        EndpointConfig(id="storyteller", templateId="storyteller", **FAST),
    ]
    with running_emulator(
        handlers=handlers, templates=templates, endpoints=endpoints, rate_limits_enabled=False
    ) as handle:
        yield handle


@pytest.fixture(params=["sync", "async"])
async def client(
    request: pytest.FixtureRequest, client_emulator: EmulatorHandle
) -> AsyncIterator[Client]:
    """The same test interface over either flavour of the client."""
    if request.param == "sync":
        yield SyncClient(client_emulator)
        return
    async with ClientSession() as session:
        yield AsyncClient(client_emulator, session)
