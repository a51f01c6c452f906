"""Admin transports: wire shapes both ways, GraphQL variables, errors (in-memory HTTP)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from bridge import errors
from bridge.runpod import _admin_transports as t
from bridge.runpod._config import Secret

FIELDS: dict[str, Any] = {
    "name": "n",
    "templateId": "tpl",
    "gpuIds": "AMPERE_16, ADA_24",
    "gpuCount": 2,
    "networkVolumeId": "vol1",
    "locations": "US,CZ",
    "idleTimeout": 5,
    "scalerType": "QUEUE_DELAY",
    "scalerValue": 4,
    "workersMin": 0,
    "workersMax": 3,
    "flashboot": True,
    "allowedCudaVersions": "12.1,12.2",
}


def test_rest_body_and_back() -> None:
    body = t._to_rest(FIELDS)
    assert body == {
        "name": "n",
        "templateId": "tpl",
        "gpu": {
            "pools": ["AMPERE_16", "ADA_24"],
            "count": 2,
            "allowedCudaVersions": ["12.1", "12.2"],
        },
        "workers": {"min": 0, "max": 3, "idleTimeout": 5},
        "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
        "networkVolumes": ["vol1"],
        "dataCenterIds": ["US", "CZ"],
        "flashboot": "FLASHBOOT",
    }
    back = t._from_rest({**body, "id": "e1"})
    assert set(back) == set(t.ENDPOINT_KEYS)
    assert back == {**FIELDS, "id": "e1", "gpuIds": "AMPERE_16,ADA_24", "status": "ACTIVE"}


def test_rest_partial_update_sends_only_what_changes() -> None:
    assert t._to_rest({"workersMax": 0}) == {"workers": {"max": 0}}
    assert t._to_rest({"scalerType": "REQUEST_COUNT", "scalerValue": 2}) == {
        "scaling": {"type": "REQUEST_COUNT", "requestCount": 2}
    }
    assert t._to_rest({"flashboot": False}) == {"flashboot": "OFF"}


def test_graphql_input_and_back() -> None:
    given = t._to_graphql(FIELDS)
    assert given["flashBootType"] == "FLASHBOOT"
    assert "flashboot" not in given
    back = t._from_graphql({**given, "id": "e1", "workersMax": 0})
    assert back["flashboot"] is True
    assert back["status"] == "DISABLED"  # no workers allowed


def test_documents_hold_no_values() -> None:
    for document in (t.SAVE, t.LIST, t.SWAP_TEMPLATE, t.DELETE):
        assert '"' not in document
        assert "\\" not in document
    assert "$input" in t.SAVE
    assert "$id" in t.DELETE


Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def graphql() -> Iterator[Callable[[Handler], t.GraphQLTransport]]:
    clients: list[httpx.Client] = []

    def make(handler: Handler) -> t.GraphQLTransport:
        client = httpx.Client(transport=httpx.MockTransport(handler))
        clients.append(client)
        return t.GraphQLTransport("https://admin.example", Secret("k"), client)

    yield make
    for client in clients:
        client.close()


def test_values_travel_in_variables(graphql: Callable[[Handler], t.GraphQLTransport]) -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"data": {"saveEndpoint": {"id": "e1", "name": 'a"b'}}})

    created = graphql(handler).create({"name": 'a"b', "templateId": "t"})
    assert created["name"] == 'a"b'
    assert sent[0]["query"] == t.SAVE
    assert sent[0]["variables"] == {"input": {"name": 'a"b', "templateId": "t"}}


def test_graphql_errors_name_every_message(
    graphql: Callable[[Handler], t.GraphQLTransport],
) -> None:
    body = {"errors": [{"message": "first"}, {"message": "second"}], "data": None}
    transport = graphql(lambda request: httpx.Response(200, json=body))
    with pytest.raises(errors.AdminError, match="first; second"):
        transport.list()


def test_graphql_partial_data_is_returned_and_logged(
    graphql: Callable[[Handler], t.GraphQLTransport], caplog: pytest.LogCaptureFixture
) -> None:
    body = {
        "errors": [{"message": "networkVolume: unavailable"}],
        "data": {"myself": {"endpoints": [{"id": "e1", "workersMax": 1}]}},
    }
    caplog.set_level(logging.WARNING, logger="bridge.runpod")
    listed = graphql(lambda request: httpx.Response(200, json=body)).list()
    assert [e["id"] for e in listed] == ["e1"]
    assert "networkVolume: unavailable" in caplog.text


def test_rest_refusals_are_admin_errors() -> None:
    problem = {"title": "Unprocessable Entity", "status": 422, "detail": "workersMax: >= 0"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json=problem)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        transport = t.RestTransport("https://admin.example", Secret("k"), client)
        with pytest.raises(errors.AdminError, match="workersMax: >= 0"):
            transport.create({"name": "n"})
