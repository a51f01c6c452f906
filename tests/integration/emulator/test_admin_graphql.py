"""The GraphQL admin API over a real socket: the exact documents runpod 1.12 generates,
the SDK's own helpers, runpodctl-style variables, and the effect on the live queue."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import runpod
from runpod.api.mutations.endpoints import (
    generate_endpoint_mutation,
    update_endpoint_template_mutation,
)
from runpod.api.mutations.templates import generate_pod_template
from runpod.api.queries.endpoints import QUERY_ENDPOINT

from bridge.emulator.testing import EmulatorHandle, running_emulator

pytestmark = pytest.mark.integration

SAVE_ENDPOINT = """mutation saveEndpoint($input: EndpointInput!) {
  saveEndpoint(input: $input) { id name templateId workersMin workersMax version env { key value } }
}"""
SAVE_TEMPLATE = """mutation saveTemplate($input: SaveTemplateInput) {
  saveTemplate(input: $input) { id name imageName env { key value } isServerless }
}"""
SWAP_TEMPLATE = """mutation Mutation($input: UpdateEndpointTemplateInput) {
  updateEndpointTemplate(input: $input) { id templateId }
}"""
JSON = {"Content-Type": "application/json"}
LIST = "query { myself { id endpoints { id name templateId workersMax pods { desiredStatus } } } }"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorHandle]:
    # A private emulator: these tests create, change and delete endpoints.
    with running_emulator(cold_start_ms=0) as handle:
        yield handle


@pytest.fixture(scope="module")
def http(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {emu.api_key}"}
    with httpx.Client(base_url=emu.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def sdk(emu: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The runpod package, its admin helpers pointed at the emulator."""
    monkeypatch.setenv("RUNPOD_API_BASE_URL", emu.url)  # read on every call
    monkeypatch.setattr(runpod, "api_key", emu.api_key)
    return runpod


def gql(http: httpx.Client, query: str, variables: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"query": query}
    if variables is not None:
        body["variables"] = variables
    response = http.post("/graphql", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def data(http: httpx.Client, query: str, variables: dict[str, Any] | None = None) -> Any:
    body = gql(http, query, variables)
    assert "errors" not in body, body
    return body["data"]


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (a condition wait, not a delay)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
    return result


def listed(http: httpx.Client) -> dict[str, Any]:
    return {e["id"]: e for e in data(http, LIST)["myself"]["endpoints"]}


def runsync(http: httpx.Client, endpoint_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = http.post(f"/v2/{endpoint_id}/runsync", json={"input": payload})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def save(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = data(http, SAVE_ENDPOINT, {"input": fields})["saveEndpoint"]
    return result


def create(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    return save(http, **{"name": "test", "templateId": "echo", **fields})


# -- the SDK, unmodified ------------------------------------------------------------------


def test_sdk_helpers_create_list_and_swap(sdk: Any, http: httpx.Client) -> None:
    template = sdk.create_template("sdk-tpl", "echo", is_serverless=True, env={"MODE": "fast"})
    assert template["imageName"] == "echo"
    assert template["env"] == [{"key": "MODE", "value": "fast"}]
    assert template["isServerless"] is True

    created = sdk.create_endpoint(
        "sdk-endpoint", template["id"], flashboot=True, workers_max=2,
        allowed_cuda_versions="12.1,12.2", scaler_type="REQUEST_COUNT", scaler_value=1,
    )  # fmt: skip
    assert re.fullmatch("[a-z0-9]{14}", created["id"])
    assert created["flashBootType"] == "FLASHBOOT"
    assert created["allowedCudaVersions"] == "12.1,12.2"
    assert (created["networkVolumeId"], created["locations"]) == (None, None)  # sent as ""
    assert (created["workersMax"], created["gpuCount"], created["gpuIds"]) == (2, 1, "AMPERE_16")

    [mine] = [e for e in sdk.get_endpoints() if e["id"] == created["id"]]
    assert mine["templateId"] == template["id"]
    assert mine["env"] == [{"key": "MODE", "value": "fast"}]  # inherited from the template
    assert (mine["networkVolume"], mine["aiKey"], mine["type"], mine["version"]) == (
        None, None, "QB", 0,
    )  # fmt: skip
    datetime.fromisoformat(mine["createdAt"])

    assert runsync(http, created["id"], {"hello": 1})["output"] == {"hello": 1}

    swapped = sdk.update_endpoint_template(created["id"], "fail")
    assert swapped == {"id": created["id"], "templateId": "fail"}
    assert runsync(http, created["id"], {})["status"] == "FAILED"


def test_sdk_rejects_wrong_key(sdk: Any) -> None:
    sdk.api_key = "not-the-key"
    with pytest.raises(runpod.error.AuthenticationError):
        sdk.get_endpoints()


def test_sdk_quote_breaks_its_own_document_without_harm(sdk: Any, http: httpx.Client) -> None:
    # runpod 1.12 splices values into the document unescaped (ENDPOINT_API §12.3): the
    # emulator must answer with a GraphQL syntax error, never act on a mangled query.
    before = set(listed(http))
    with pytest.raises(runpod.error.QueryError, match="Syntax Error"):
        sdk.create_endpoint('bad"name', "echo")
    assert set(listed(http)) == before


# -- the exact documents the SDK generates, posted raw -------------------------------------


def test_inline_literal_documents(http: httpx.Client) -> None:
    document = generate_endpoint_mutation(
        "inline", "echo", gpu_ids="ADA_24,AMPERE_16", network_volume_id="vol123",
        locations="US,CZ", idle_timeout=7, scaler_type="REQUEST_COUNT", scaler_value=2,
        workers_min=0, workers_max=4, flashboot=True, gpu_count=2,
    )  # fmt: skip
    assert "flashBootType: FLASHBOOT" in document  # an unquoted enum literal
    saved = data(http, document)["saveEndpoint"]
    assert saved["gpuIds"] == "ADA_24,AMPERE_16"
    assert (saved["networkVolumeId"], saved["locations"]) == ("vol123", "US,CZ")
    assert (saved["idleTimeout"], saved["scalerType"], saved["scalerValue"]) == (
        7, "REQUEST_COUNT", 2,
    )  # fmt: skip
    assert (saved["workersMax"], saved["gpuCount"], saved["flashBootType"]) == (4, 2, "FLASHBOOT")

    template = data(http, generate_pod_template("inline-tpl", "stream", env={"K": "v"}))
    template_id = template["saveTemplate"]["id"]
    swap = data(http, update_endpoint_template_mutation(saved["id"], template_id))
    assert swap["updateEndpointTemplate"] == {"id": saved["id"], "templateId": template_id}

    [mine] = [
        e for e in data(http, QUERY_ENDPOINT)["myself"]["endpoints"] if e["id"] == saved["id"]
    ]
    assert mine["networkVolume"] == {"id": "vol123", "dataCenterId": None}
    assert (mine["templateId"], mine["version"]) == (template_id, 1)


# -- variables, as runpodctl sends them ------------------------------------------------------


def test_variables_carry_any_string_safely(http: httpx.Client) -> None:
    nasty = (
        'quote " backslash \\ newline \n brace } ) { id } mutation { deleteEndpoint(id: "echo") }'
    )
    template = data(http, SAVE_TEMPLATE, {"input": {
        "name": nasty, "imageName": "echo", "isServerless": True,
        "env": [{"key": "PROMPT", "value": nasty}],
    }})["saveTemplate"]  # fmt: skip
    assert template["name"] == nasty
    assert template["env"] == [{"key": "PROMPT", "value": nasty}]

    created = create(http, name=nasty, templateId=template["id"])
    assert listed(http)[created["id"]]["name"] == nasty
    assert "echo" in listed(http)  # nothing in the string was executed

    swap = data(http, SWAP_TEMPLATE, {"input": {"endpointId": created["id"], "templateId": "fail"}})
    assert swap["updateEndpointTemplate"]["templateId"] == "fail"


def test_save_endpoint_with_id_updates_only_given_fields(http: httpx.Client) -> None:
    created = create(http, name="partial", workersMax=2)
    updated = save(http, id=created["id"], workersMax=5)
    assert updated["id"] == created["id"]
    assert (updated["name"], updated["workersMax"], updated["version"]) == ("partial", 5, 1)


# -- the live queue -------------------------------------------------------------------------


def test_template_swap_applies_to_jobs_started_afterwards(http: httpx.Client) -> None:
    endpoint = create(http, workersMax=2)["id"]
    running = http.post(f"/v2/{endpoint}/run", json={"input": {"sleep_ms": 300}}).json()
    eventually(
        lambda: http.get(f"/v2/{endpoint}/status/{running['id']}").json()["status"] == "IN_PROGRESS"
    )
    data(http, SWAP_TEMPLATE, {"input": {"endpointId": endpoint, "templateId": "fail"}})

    after = runsync(http, endpoint, {"x": 1})
    assert after["status"] == "FAILED"  # the new template's handler
    before = http.post(f"/v2/{endpoint}/status-sync/{running['id']}?wait=10000").json()
    assert before["status"] == "COMPLETED"  # the job that had started kept its handler
    assert before["output"] == {"sleep_ms": 300}


def test_workers_max_change_rescales(http: httpx.Client) -> None:
    endpoint = create(http, workersMax=1, scalerType="REQUEST_COUNT", scalerValue=1)["id"]
    for _ in range(3):
        http.post(f"/v2/{endpoint}/run", json={"input": {"sleep_ms": 5000}})

    def jobs() -> dict[str, int]:
        counts: dict[str, int] = http.get(f"/v2/{endpoint}/health").json()["jobs"]
        return counts

    eventually(lambda: jobs()["inProgress"] == 1 and jobs()["inQueue"] == 2)
    save(http, id=endpoint, workersMax=3)
    eventually(lambda: jobs()["inProgress"] == 3)
    assert len(listed(http)[endpoint]["pods"]) == 3
    http.post(f"/v2/{endpoint}/purge-queue")
    save(http, id=endpoint, workersMax=0)
    data(http, f'mutation {{ deleteEndpoint(id: "{endpoint}") }}')  # cancels the running jobs


def test_delete_requires_scaled_down_endpoint(http: httpx.Client) -> None:
    endpoint = create(http, workersMax=3)["id"]
    delete = f'mutation {{ deleteEndpoint(id: "{endpoint}") }}'
    refused = gql(http, delete)
    assert "workersMax=3" in refused["errors"][0]["message"]
    assert endpoint in listed(http)

    save(http, id=endpoint, workersMin=0, workersMax=0)
    assert gql(http, delete) == {"data": {"deleteEndpoint": None}}
    assert endpoint not in listed(http)
    assert http.post(f"/v2/{endpoint}/run", json={"input": {}}).status_code == 404


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('mutation { updateEndpointTemplate(input: {endpointId: "nope", templateId: "echo"}) '
         "{ id } }", "endpoint 'nope' not found"),
        ('mutation { saveEndpoint(input: {name: "x", templateId: "nope"}) { id } }',
         "template 'nope' not found"),
        ('mutation { saveEndpoint(input: {name: "x", templateId: "echo", '
         'scalerType: "WORKER_COUNT"}) { id } }', "scalerType"),
        ('mutation { saveEndpoint(input: {name: "x", templateId: "echo", workersMin: 4, '
         "workersMax: 1}) { id } }", "must not exceed"),
        ('mutation { saveEndpoint(input: {templateId: "echo"}) { id } }', "name is required"),
        ('mutation { saveEndpoint(input: {id: "nope", workersMax: 1}) { id } }', "not found"),
        ('mutation { deleteEndpoint(id: "nope") }', "not found"),
    ],
)  # fmt: skip
def test_resolver_errors(http: httpx.Client, document: str, message: str) -> None:
    body = gql(http, document)
    assert message in body["errors"][0]["message"]
    assert "data" in body  # execution started: the field is null


@pytest.mark.parametrize(
    "document",
    [
        "{ myself { nope } }",
        'mutation { saveEndpoint(input: {name: "x", flashBootType: "FLASHBOOT"}) { id } }',
        "mutation { saveEndpoint(input: {name: 1}) { id } }",
        "{ myself {",
    ],
)
def test_invalid_documents_get_errors_and_no_data(http: httpx.Client, document: str) -> None:
    body = gql(http, document)
    assert body["errors"][0]["message"]
    assert "data" not in body


def test_missing_variable_is_an_error(http: httpx.Client) -> None:
    body = gql(http, SAVE_ENDPOINT, {})
    assert "$input" in body["errors"][0]["message"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not valid JSON"), (b"[1]", "JSON object"), (b'{"query": 3}', "query")],
)
def test_malformed_requests_are_400(http: httpx.Client, content: bytes, message: str) -> None:
    response = http.post("/graphql", content=content, headers=JSON)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_auth(emu: EmulatorHandle) -> None:
    query = {"query": "{ myself { id } }"}
    assert httpx.post(f"{emu.url}/graphql", json=query).status_code == 401
    wrong = httpx.post(f"{emu.url}/graphql", json=query, headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401
    # A key in the URL is not accepted (issue 14 item 4): it leaks into logs and history,
    # and let a plain HTML form on any web page use the development key (CSRF).
    by_param = httpx.post(f"{emu.url}/graphql?api_key={emu.api_key}", json=query)
    assert by_param.status_code == 401
    assert "query string is not accepted" in by_param.json()["error"]


def test_get_serves_queries_not_mutations(http: httpx.Client) -> None:
    query = http.get("/graphql", params={"query": "{ myself { id } }"})
    assert query.json()["data"]["myself"]["id"] == "user_emulator"
    mutation = http.get("/graphql", params={"query": 'mutation { deleteEndpoint(id: "echo") }'})
    assert mutation.status_code == 405
    assert "echo" in listed(http)


# -- issue 16 item 5: fields real queries select ------------------------------------------------


def test_myself_has_the_fields_real_queries_select(http: httpx.Client) -> None:
    """Queries from RunPod's docs and users select ``serverlessDiscount`` (an object),
    ``podTemplates``, ``pubKey`` and ``networkVolumes`` next to ``endpoints``."""
    query = """query Endpoints { myself {
      id email pubKey
      endpoints { id templateId }
      serverlessDiscount { discountFactor type expirationDate }
      podTemplates { id name imageName isServerless }
      networkVolumes { id dataCenterId }
    } }"""
    me = data(http, query)["myself"]
    assert me["serverlessDiscount"] is None  # the emulated account has no discount
    assert (me["pubKey"], me["networkVolumes"]) == (None, [])
    assert {"echo", "stream", "fail", "external"} <= {t["id"] for t in me["podTemplates"]}
    assert {"echo"} <= {e["id"] for e in me["endpoints"]}


def test_the_sdks_user_query_works(sdk: Any) -> None:
    me = sdk.get_user()
    assert (me["id"], me["networkVolumes"]) == ("user_emulator", [])


def test_pod_templates_have_their_start_fields(http: httpx.Client) -> None:
    document = """mutation saveTemplate($input: SaveTemplateInput) {
      saveTemplate(input: $input) { id startSsh startJupyter startScript advancedStart }
    }"""
    given = {"name": "starter", "imageName": "echo", "startJupyter": True,
             "startScript": "./boot.sh", "advancedStart": True}  # fmt: skip
    saved = data(http, document, {"input": given})["saveTemplate"]
    assert (saved["startJupyter"], saved["startScript"], saved["advancedStart"]) == (
        True,
        "./boot.sh",
        True,
    )
    plain = data(http, document, {"input": {"name": "plain", "imageName": "echo"}})
    assert plain["saveTemplate"] == {
        "id": plain["saveTemplate"]["id"],
        "startSsh": True,
        "startJupyter": False,
        "startScript": "",
        "advancedStart": False,
    }
