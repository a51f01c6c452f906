"""The REST v2 admin API (``/v2/serverless``) over a real socket: shapes, problem
documents, and changes that reach the live queue. Shapes follow RunPod's openapi
(``api-reference-v2/openapi.json``; issue 16 item 5)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from bridge.emulator.testing import EmulatorHandle, running_emulator

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
JSON = {"Content-Type": "application/json"}


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


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (a condition wait, not a delay)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
    return result


def create(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {
        "name": "rest",
        "type": "QUEUE",
        "templateId": "echo",
        "gpu": {"pools": ["ADA_24"]},
        "scaling": {"type": "REQUEST_COUNT", "requestCount": 1},
        **fields,
    }
    response = http.post("/v2/serverless", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def patch(http: httpx.Client, endpoint_id: str, **fields: Any) -> dict[str, Any]:
    response = http.patch(f"/v2/serverless/{endpoint_id}", json=fields)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def runsync(http: httpx.Client, endpoint_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = http.post(f"/v2/{endpoint_id}/runsync", json={"input": payload})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_create_returns_the_endpoint_and_it_serves_jobs(
    emu: EmulatorHandle, http: httpx.Client
) -> None:
    endpoint = create(
        http,
        name="image-generator",
        gpu={"pools": ["ADA_24", "AMPERE_16"], "count": 2, "allowedCudaVersions": ["12.4"]},
        workers={"min": 0, "max": 5, "idleTimeout": 7},
        scaling={"type": "QUEUE_DELAY", "queueDelay": 4},
        flashboot="FLASHBOOT",
        dataCenterIds=["US-KS-2"],
        timeout=120_000,
    )
    assert re.fullmatch("[a-z0-9]{14}", endpoint["id"])
    assert endpoint["name"] == "image-generator"
    assert (endpoint["type"], endpoint["image"]) == ("QUEUE", "echo")
    assert "templateId" not in endpoint  # REST v2's Endpoint has none
    assert (endpoint["args"], endpoint["disk"], endpoint["ports"], endpoint["registry"]) == (
        "",
        None,
        [],
        None,
    )
    assert endpoint["gpu"] == {"pools": ["ADA_24", "AMPERE_16"], "count": 2,
                               "allowedCudaVersions": ["12.4"], "minCudaVersion": None}  # fmt: skip
    assert endpoint["workers"] == {"min": 0, "max": 5, "idleTimeout": 7}
    assert endpoint["scaling"] == {"type": "QUEUE_DELAY", "queueDelay": 4}
    assert (endpoint["flashboot"], endpoint["timeout"]) == ("FLASHBOOT", 120_000)
    assert endpoint["dataCenterIds"] == ["US-KS-2"]
    datetime.fromisoformat(endpoint["createdAt"])
    urls = endpoint["requestUrls"]
    base = f"{emu.url}/v2/{endpoint['id']}"
    assert urls == {
        "run": f"{base}/run",
        "runSync": f"{base}/runsync",
        "status": f"{base}/status/{{job_id}}",  # a literal placeholder, as RunPod's
        "stream": f"{base}/stream/{{job_id}}",
        "cancel": f"{base}/cancel/{{job_id}}",
        "retry": f"{base}/retry/{{job_id}}",
        "purgeQueue": f"{base}/purge-queue",
        "health": f"{base}/health",
    }

    result = http.post(urls["runSync"], json={"input": {"prompt": "hi"}}).json()
    assert (result["status"], result["output"]) == ("COMPLETED", {"prompt": "hi"})
    assert http.get(urls["health"]).json()["jobs"]["completed"] == 1


def test_defaults(http: httpx.Client) -> None:
    endpoint = create(http, scaling={"type": "QUEUE_DELAY", "queueDelay": 4})
    assert (endpoint["flashboot"], endpoint["timeout"]) == ("OFF", 300_000)
    assert endpoint["workers"] == {"min": 0, "max": 3, "idleTimeout": 10}


def test_idle_timeout_is_not_shown_with_request_count(http: httpx.Client) -> None:
    assert create(http)["workers"] == {"min": 0, "max": 3}


def graphql_template_id(http: httpx.Client, endpoint_id: str) -> str:
    query = "{ myself { endpoints { id templateId } podTemplates { id } } }"
    me = http.post("/graphql", json={"query": query}).json()["data"]["myself"]
    [template_id] = [e["templateId"] for e in me["endpoints"] if e["id"] == endpoint_id]
    assert template_id in {t["id"] for t in me["podTemplates"]}
    result: str = template_id
    return result


def test_image_makes_the_endpoints_own_template(http: httpx.Client) -> None:
    endpoint = create(http, templateId=None, image="echo", env={"MODE": "x"})
    assert graphql_template_id(http, endpoint["id"]) not in ("echo", None)
    assert (endpoint["image"], endpoint["env"]) == ("echo", {"MODE": "x"})
    assert runsync(http, endpoint["id"], {"n": 1})["output"] == {"n": 1}


def test_template_id_with_image_is_allowed_and_the_body_wins(http: httpx.Client) -> None:
    endpoint = create(http, templateId="echo", image="fail", args="--fast", ports=["8000/http"])
    assert (endpoint["image"], endpoint["args"], endpoint["ports"]) == (
        "fail",
        "--fast",
        ["8000/http"],
    )
    assert runsync(http, endpoint["id"], {})["status"] == "FAILED"
    assert graphql_template_id(http, endpoint["id"]) != "echo"
    assert runsync(http, "echo", {"still": "echo"})["output"] == {"still": "echo"}


def test_list_get_and_graphql_agree(http: httpx.Client) -> None:
    endpoint = create(http, name="agree")
    listed = {e["id"]: e for e in http.get("/v2/serverless").json()["endpoints"]}
    assert listed[endpoint["id"]] == endpoint
    assert {"echo", "stream", "fail", "external"} <= set(listed)
    assert http.get(f"/v2/serverless/{endpoint['id']}").json() == endpoint
    query = "{ myself { endpoints { id name workersMax scalerType scalerValue } } }"
    graphql = http.post("/graphql", json={"query": query}).json()["data"]["myself"]["endpoints"]
    [same] = [e for e in graphql if e["id"] == endpoint["id"]]
    assert same == {"id": endpoint["id"], "name": "agree", "workersMax": 3,
                    "scalerType": "REQUEST_COUNT", "scalerValue": 1}  # fmt: skip


def test_patch_changes_only_what_it_names(http: httpx.Client) -> None:
    endpoint = create(
        http,
        workers={"min": 0, "max": 2, "idleTimeout": 9},
        scaling={"type": "QUEUE_DELAY", "queueDelay": 2},
    )
    changed = patch(http, endpoint["id"], name="renamed", workers={"max": 4})
    assert changed["name"] == "renamed"
    assert changed["workers"] == {"min": 0, "max": 4, "idleTimeout": 9}
    assert changed["scaling"] == endpoint["scaling"]
    assert changed["createdAt"] == endpoint["createdAt"]


def test_template_swap_applies_to_jobs_started_afterwards(http: httpx.Client) -> None:
    endpoint = create(http)["id"]
    running = http.post(f"/v2/{endpoint}/run", json={"input": {"sleep_ms": 300}}).json()
    eventually(
        lambda: http.get(f"/v2/{endpoint}/status/{running['id']}").json()["status"] == "IN_PROGRESS"
    )
    assert patch(http, endpoint, templateId="fail")["image"] == "fail"

    assert runsync(http, endpoint, {})["status"] == "FAILED"
    before = http.post(f"/v2/{endpoint}/status-sync/{running['id']}?wait=10000").json()
    assert (before["status"], before["output"]) == ("COMPLETED", {"sleep_ms": 300})

    patch(http, endpoint, image="stream")  # a new image makes a new template
    assert runsync(http, endpoint, {"n": 2, "interval_ms": 0})["status"] == "COMPLETED"


def test_workers_max_change_rescales(http: httpx.Client) -> None:
    endpoint = create(http, workers={"min": 0, "max": 1})["id"]
    for _ in range(3):
        http.post(f"/v2/{endpoint}/run", json={"input": {"sleep_ms": 5000}})

    def jobs() -> dict[str, int]:
        counts: dict[str, int] = http.get(f"/v2/{endpoint}/health").json()["jobs"]
        return counts

    eventually(lambda: jobs()["inProgress"] == 1 and jobs()["inQueue"] == 2)
    patch(http, endpoint, workers={"max": 3})
    eventually(lambda: jobs()["inProgress"] == 3)
    assert http.delete(f"/v2/serverless/{endpoint}").status_code == 204  # cancels them


def template_ids(http: httpx.Client) -> set[str]:
    query = "{ myself { podTemplates { id } } }"
    templates = http.post("/graphql", json={"query": query}).json()["data"]["myself"]
    return {t["id"] for t in templates["podTemplates"]}


def test_delete_removes_the_endpoint_and_its_template(http: httpx.Client) -> None:
    endpoint = create(http)["id"]
    template = graphql_template_id(http, endpoint)
    job = http.post(f"/v2/{endpoint}/run", json={"input": {}})
    assert job.status_code == 200
    response = http.delete(f"/v2/serverless/{endpoint}")
    assert (response.status_code, response.content) == (204, b"")
    assert http.get(f"/v2/serverless/{endpoint}").status_code == 404
    assert http.get(f"/v2/{endpoint}/health").status_code == 404
    assert endpoint not in {e["id"] for e in http.get("/v2/serverless").json()["endpoints"]}
    assert template not in template_ids(http)
    assert "echo" in template_ids(http)  # the template it was made from stays


def test_a_template_swap_replaces_the_endpoints_own_template(http: httpx.Client) -> None:
    endpoint = create(http)["id"]
    first = graphql_template_id(http, endpoint)
    assert patch(http, endpoint, templateId="stream")["image"] == "stream"
    assert first not in template_ids(http)
    assert patch(http, endpoint, env={"K": "v"})["env"] == {"K": "v"}
    assert graphql_template_id(http, endpoint) not in (first, "stream")


# -- compute, scaling and CUDA rules between fields (400) ------------------------------------


def test_a_cpu_endpoint(http: httpx.Client) -> None:
    endpoint = create(http, gpu=None, cpu=[{"id": "cpu3c", "vcpuCount": 4}])
    assert endpoint["gpu"] is None
    assert endpoint["cpu"] == [{"id": "cpu3c", "vcpuCount": 4, "memory": 8}]
    assert runsync(http, endpoint["id"], {"on": "cpu"})["output"] == {"on": "cpu"}
    refused = http.patch(f"/v2/serverless/{endpoint['id']}", json={"gpu": {"count": 2}})
    assert refused.status_code == 400
    assert "compute is fixed" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"gpu": None}, "exactly one of gpu or cpu"),
        ({"cpu": [{"id": "cpu3c", "vcpuCount": 2}]}, "not both"),
        ({"workers": {"idleTimeout": 5}}, "does not apply to REQUEST_COUNT"),
        ({"gpu": {"pools": ["ADA_24"], "allowedCudaVersions": ["12.4"], "minCudaVersion": "12.1"}},
         "exclude each other"),
    ],
)  # fmt: skip
def test_cross_field_rules_are_400(http: httpx.Client, fields: dict[str, Any], detail: str) -> None:
    body = {"name": "x", "type": "QUEUE", "templateId": "echo", "gpu": {"pools": ["ADA_24"]},
            "scaling": {"type": "REQUEST_COUNT", "requestCount": 1}, **fields}  # fmt: skip
    body = {k: v for k, v in body.items() if v is not None}
    response = http.post("/v2/serverless", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith(PROBLEM)
    assert detail in response.json()["detail"]


def test_idle_timeout_with_request_count_is_refused_on_update_too(http: httpx.Client) -> None:
    endpoint = create(http)["id"]
    response = http.patch(f"/v2/serverless/{endpoint}", json={"workers": {"idleTimeout": 30}})
    assert response.status_code == 400
    queue_delay = {"type": "QUEUE_DELAY", "queueDelay": 1}
    switched = patch(http, endpoint, scaling=queue_delay, workers={"idleTimeout": 30})
    assert switched["workers"]["idleTimeout"] == 30


def test_queue_api_is_not_shadowed(http: httpx.Client) -> None:
    assert http.get("/v2/echo/health").status_code == 200
    assert runsync(http, "echo", {"a": 1})["output"] == {"a": 1}
    assert http.get("/v2/serverless/health").status_code == 404  # no endpoint "health"


# -- problems ------------------------------------------------------------------------------

VALID = {"name": "x", "type": "QUEUE", "templateId": "echo", "gpu": {"pools": ["ADA_24"]},
         "scaling": {"type": "QUEUE_DELAY"}}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({k: v for k, v in VALID.items() if k != "name"}, "name"),
        ({k: v for k, v in VALID.items() if k != "scaling"}, "scaling"),
        ({**VALID, "templateId": None}, "either templateId or image"),
        ({**VALID, "cpu": [{"id": "cpu3c", "vcpuCount": 3}]}, "power of two"),
        ({**VALID, "templateId": "nope"}, "template 'nope' not found"),
        ({**VALID, "type": "LOAD_BALANCER"}, "only queue endpoints"),
        ({**VALID, "type": "SOMETHING"}, "type"),
        ({**VALID, "workers": {"min": 4, "max": 1}}, "must not exceed"),
        ({**VALID, "workers": {"max": -1}}, "workers.max"),
        ({**VALID, "scaling": {"type": "QUEUE_DELAY", "requestCount": 2}}, "queueDelay"),
        ({**VALID, "scaling": {"type": "QUEUE_DELAY", "queueDelay": 0.1}}, "queueDelay"),
        ({**VALID, "flashboot": "ON"}, "flashboot"),
        ({**VALID, "gpuTypo": ["x"]}, "gpuTypo"),
    ],
)
def test_invalid_create_is_422(http: httpx.Client, body: dict[str, Any], detail: str) -> None:
    response = http.post("/v2/serverless", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert (problem["status"], problem["title"]) == (422, "Unprocessable Entity")
    assert detail in problem["detail"]


@pytest.mark.parametrize("content", [b"{nope", b"[1, 2]", b""])
def test_malformed_body_is_400(http: httpx.Client, content: bytes) -> None:
    response = http.post("/v2/serverless", content=content, headers=JSON)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["status"] == 400


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_unknown_endpoint_is_404(http: httpx.Client, method: str) -> None:
    response = http.request(method, "/v2/serverless/nope", json={"name": "y"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM)
    assert "'nope' not found" in response.json()["detail"]


def test_rejected_patch_changes_nothing(http: httpx.Client) -> None:
    endpoint = create(http, workers={"min": 0, "max": 2})
    response = http.patch(f"/v2/serverless/{endpoint['id']}", json={"workers": {"min": 3}})
    assert response.status_code == 422
    assert http.get(f"/v2/serverless/{endpoint['id']}").json() == endpoint


def test_needs_a_key_and_says_so_in_a_problem_document(emu: EmulatorHandle) -> None:
    reply = httpx.get(f"{emu.url}/v2/serverless")
    assert reply.status_code == 401
    assert reply.headers["content-type"].startswith(PROBLEM)
    assert reply.json()["title"] == "Unauthorized"
    assert "missing API key" in reply.json()["detail"]
    wrong = httpx.get(f"{emu.url}/v2/serverless", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()["status"]) == (401, 401)
    # A key in the query string is not accepted anywhere (issue 14 item 4)
    assert httpx.get(f"{emu.url}/v2/serverless?api_key={emu.api_key}").status_code == 401


def test_answers_carry_rate_limit_headers(http: httpx.Client) -> None:
    reply = http.get("/v2/serverless")
    assert re.fullmatch(r'"minute";r=\d+;t=\d+, "hour";r=\d+;t=\d+, "day";r=\d+;t=\d+',
                        reply.headers["RateLimit"])  # fmt: skip
    assert reply.headers["RateLimit-Policy"].startswith('"minute";q=6000;w=60, "hour";q=')


def test_past_the_quota_a_429_problem_with_retry_after() -> None:
    with (
        running_emulator(admin_rate_limits={"minute": 2, "day": 1000}) as emu,
        httpx.Client(base_url=emu.url, headers={"Authorization": emu.api_key}) as http,
    ):
        replies = [http.get("/v2/serverless") for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 429]
    first, limited = replies[0], replies[2]
    assert first.headers["RateLimit"].startswith('"minute";r=1;t=')
    assert first.headers["RateLimit-Policy"] == '"minute";q=2;w=60, "day";q=1000;w=86400'
    assert limited.headers["content-type"].startswith(PROBLEM)
    assert (limited.json()["status"], limited.json()["title"]) == (429, "Too Many Requests")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["RateLimit"].startswith('"minute";r=0;t=')


def test_an_own_template_another_endpoint_uses_outlives_its_endpoint(http: httpx.Client) -> None:
    """GraphQL's updateEndpointTemplate can point another endpoint at a REST endpoint's
    own template: deleting the REST endpoint keeps the template while it is used."""
    first = create(http, templateId="stream")["id"]
    template = graphql_template_id(http, first)
    second = create(http)["id"]
    swap = """mutation Mutation($input: UpdateEndpointTemplateInput) {
      updateEndpointTemplate(input: $input) { id templateId } }"""
    variables = {"input": {"endpointId": second, "templateId": template}}
    swapped = http.post("/graphql", json={"query": swap, "variables": variables}).json()
    assert "errors" not in swapped
    assert http.delete(f"/v2/serverless/{first}").status_code == 204
    assert template in template_ids(http)
    assert runsync(http, second, {"n": 1, "interval_ms": 0})["status"] == "COMPLETED"
    assert http.delete(f"/v2/serverless/{second}").status_code == 204
