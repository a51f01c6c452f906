"""Issue 14 items 3-5: the emulator cannot be taken over, by a key holder or a web page.

Each test reproduces one finding of the review (it failed on the emulator before the
fix) on a real socket.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from bridge.emulator.settings import DEV_API_KEY, EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator, wait_until

pytestmark = pytest.mark.integration

ATTACKS = ["subprocess:getoutput", "sys:exit", "os:system"]
FAST: dict[str, Any] = {"workersMax": 5, "scalerType": "REQUEST_COUNT", "scalerValue": 1}
SAVE_TEMPLATE = """mutation saveTemplate($input: SaveTemplateInput) {
  saveTemplate(input: $input) { id imageName }
}"""
SWAP_TEMPLATE = """mutation Mutation($input: UpdateEndpointTemplateInput) {
  updateEndpointTemplate(input: $input) { id templateId }
}"""


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorHandle]:
    """A private emulator (default settings: these tests ran on the emulator before the
    fixes, and failed there for the reason each one names)."""
    with running_emulator(cold_start_ms=0) as handle:
        yield handle


@pytest.fixture(scope="module")
def http(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {emu.api_key}"}
    with httpx.Client(base_url=emu.url, headers=headers, timeout=10) as client:
        yield client


def non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback (a caller from "outside")."""
    candidates = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: picks the outgoing address, sends nothing
            candidates.append(probe.getsockname()[0])
        except OSError:
            pass
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    for address in candidates:
        if not ipaddress.ip_address(address).is_loopback:
            return address
    if os.environ.get("CI"):
        pytest.fail("this machine has no non-loopback IPv4 address")
    pytest.skip("this machine has no non-loopback IPv4 address")


def gql(http: httpx.Client, query: str, variables: dict[str, Any]) -> Any:
    response = http.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    return response.json()


def image_names(emu: EmulatorHandle) -> set[str]:
    return {t.imageName for t in emu.call(lambda: list(emu.engine.templates.values()))}


# -- 3. no import path through the admin API; handler exits contained ----------------------


@pytest.mark.parametrize("image", ATTACKS)
def test_graphql_cannot_name_an_import_path(
    emu: EmulatorHandle, http: httpx.Client, image: str
) -> None:
    """Before: saveTemplate + updateEndpointTemplate ran ``subprocess:getoutput`` (the job
    dict's keys made it run ``id``: ``uid=0(root)``) and ``sys:exit`` killed the server."""
    body = gql(http, SAVE_TEMPLATE, {"input": {"name": "x", "imageName": image}})
    assert body.get("data", {}).get("saveTemplate") is None, body
    message = body["errors"][0]["message"]
    assert f"imageName {image!r} is not a handler this emulator may run" in message
    assert "choose one of echo, stream, fail, external" in message
    assert image not in image_names(emu)


@pytest.mark.parametrize("image", ATTACKS)
def test_rest_cannot_name_an_import_path(
    emu: EmulatorHandle, http: httpx.Client, image: str
) -> None:
    created = http.post(
        "/v2/serverless",
        json={
            "name": "x",
            "type": "QUEUE",
            "image": image,
            "gpu": {"pools": ["ADA_24"]},
            "scaling": {"type": "REQUEST_COUNT", "requestCount": 1},
        },
    )
    assert created.status_code == 422, created.text
    assert "is not a handler this emulator may run" in created.json()["detail"]
    patched = http.patch("/v2/serverless/echo", json={"image": image})
    assert patched.status_code == 422, patched.text
    assert image not in image_names(emu)
    assert http.post("/v2/echo/runsync", json={"input": {"v": 1}}).json()["output"] == {"v": 1}


def test_the_admin_api_may_pick_an_allowed_handler_by_name() -> None:
    """A handler on the allow-list (``handlers``) that no template uses yet."""
    with (
        running_emulator(handlers={"tagged": "emulator_test_handlers:tagged"}) as emu,
        httpx.Client(base_url=emu.url, headers={"Authorization": emu.api_key}) as http,
    ):
        template = gql(http, SAVE_TEMPLATE, {"input": {"name": "t", "imageName": "tagged"}})
        template_id = template["data"]["saveTemplate"]["id"]
        created = http.post(
            "/v2/serverless",
            json={
                "name": "picked",
                "type": "QUEUE",
                "templateId": "echo",
                "gpu": {"pools": ["ADA_24"]},
                "workers": {"max": 2},
                "scaling": {"type": "REQUEST_COUNT", "requestCount": 1},
            },
        ).json()
        swap = {"input": {"endpointId": created["id"], "templateId": template_id}}
        assert "errors" not in gql(http, SWAP_TEMPLATE, swap)
        reply = http.post(f"/v2/{created['id']}/runsync", json={"input": {"k": 2}}).json()
        refused = gql(http, SAVE_TEMPLATE, {"input": {"name": "u", "imageName": "untagged"}})
    assert reply["output"] == {"handler": "tagged", "input": {"k": 2}}
    assert "choose one of echo, stream, fail, tagged, external" in refused["errors"][0]["message"]


@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        ("emulator_test_handlers:exits", "SystemExit"),
        ("emulator_test_handlers:interrupts", "KeyboardInterrupt"),
        ("emulator_test_handlers:exits_midstream", "SystemExit"),
    ],
)
def test_a_handler_that_exits_fails_its_job_not_the_server(handler: str, kind: str) -> None:
    """Before: ``SystemExit`` passed ``except Exception`` and stopped the server's loop."""
    templates = [
        TemplateConfig(id="echo", imageName="echo"),
        TemplateConfig(id="bad", imageName=handler),
    ]
    endpoints = [
        EndpointConfig(id="echo", templateId="echo", **FAST),
        EndpointConfig(id="bad", templateId="bad", **FAST),
    ]
    with (
        running_emulator(templates=templates, endpoints=endpoints, cold_start_ms=0) as emu,
        httpx.Client(
            base_url=emu.base_url, headers={"Authorization": emu.api_key}, timeout=10
        ) as api,
    ):
        failed = api.post("/bad/runsync", json={"input": {}}).json()
        assert failed["status"] == "FAILED", failed
        if handler.endswith("midstream"):  # a generator: the worker SDK's plain string
            assert failed["error"].startswith("handler: 2 \ntraceback:")
            assert f"{kind}: 2" in failed["error"]
        else:
            assert json.loads(failed["error"])["error_type"] == f"<class '{kind}'>"
        again = api.post("/bad/runsync", json={"input": {}}).json()
        assert again["status"] == "FAILED"
        assert api.post("/echo/runsync", json={"input": {"ok": 1}}).json()["output"] == {"ok": 1}


# -- 4. bodies must be JSON (CSRF) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/graphql", {"query": 'mutation { deleteEndpoint(id: "stream") }'}),
        ("/v2/echo/run", {"input": {"from": "a web page"}}),
        ("/v2/serverless", {"name": "x", "type": "QUEUE", "templateId": "echo"}),
        ("/_emulator/faults/echo", {"error_rate": 1}),
    ],
)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_a_body_that_is_not_declared_json_is_415(
    emu: EmulatorHandle,
    http: httpx.Client,
    path: str,
    body: dict[str, Any],
    content_type: str | None,
) -> None:
    """Before: every content type was parsed as JSON, so a plain HTML form on any page
    (``enctype="text/plain"``) could post a GraphQL mutation."""
    headers = {"Content-Type": content_type} if content_type else {}
    before = emu.stats("echo")["submissions"]
    response = http.post(path, content=json.dumps(body).encode(), headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.text
    assert emu.stats("echo")["submissions"] == before
    assert "stream" in {e.id for e in emu.call(lambda: list(emu.engine.endpoints.values()))}
    assert emu.stats("echo")["faults_injected"] == 0
    assert http.get("/v2/echo/health").status_code == 200


def test_json_with_a_charset_is_json(http: httpx.Client) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    reply = http.post("/v2/echo/runsync", content=b'{"input": {"c": 1}}', headers=headers)
    assert reply.json()["output"] == {"c": 1}


# -- 4. the Host header (DNS rebinding) ------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example", "10.0.0.1"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v2/echo/health"), ("POST", "/graphql"), ("GET", "/v2/external/ping/w1")],
)
def test_a_foreign_host_is_refused(emu: EmulatorHandle, host: str, method: str, path: str) -> None:
    """Before: any Host was served, so a page whose name was rebound to 127.0.0.1 could
    talk to the emulator as its own origin (and send the public development key)."""
    headers = {"Host": host, "Authorization": f"Bearer {emu.api_key}"}
    reply = httpx.request(
        method, emu.url + path, headers=headers, json={"query": "{ myself { id } }"}
    )
    assert reply.status_code == 421, reply.text
    assert "does not answer to Host" in reply.json()["error"]


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:80", "127.0.0.1", "127.0.0.2:9", "[::1]:8000"]
)
def test_loopback_names_are_served(emu: EmulatorHandle, host: str) -> None:
    headers = {"Host": host, "Authorization": f"Bearer {emu.api_key}"}
    assert httpx.get(f"{emu.url}/v2/echo/health", headers=headers).status_code == 200


def test_a_request_without_host_is_refused(emu: EmulatorHandle) -> None:
    port = int(emu.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET /v2/echo/health HTTP/1.0\r\nAuthorization: {emu.api_key}\r\n\r\n".encode()
        )
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.0 421") or head.startswith("HTTP/1.1 421"), head


def test_allowed_hosts_adds_names() -> None:
    with running_emulator(allowed_hosts="emulator, bridge.internal") as emu:
        for host, expected in (("emulator:8000", 200), ("bridge.internal", 200), ("evil", 421)):
            headers = {"Host": host, "Authorization": emu.api_key}
            assert httpx.get(f"{emu.url}/v2/echo/health", headers=headers).status_code == expected


# -- 4/5. keys: never in the query string; the development key from loopback only ---------


def test_a_key_in_the_query_string_is_not_accepted(emu: EmulatorHandle) -> None:
    for path in ("/v2/echo/health", "/graphql?query={myself{id}}", "/v2/serverless"):
        sep = "&" if "?" in path else "?"
        reply = httpx.get(f"{emu.url}{path}{sep}api_key={emu.api_key}")
        assert reply.status_code == 401, path
        body = reply.json()  # REST v2 answers a problem document: its text is "detail"
        assert "query string is not accepted" in body.get("error", body.get("detail")), body


def test_the_development_key_is_refused_to_other_callers() -> None:
    """Before: the development key worked for anyone who could reach the port."""
    address = non_loopback_address()
    with running_emulator(host="0.0.0.0") as emu:  # what check_bind refuses in `serve`
        assert emu.api_key == DEV_API_KEY
        port = emu.url.rsplit(":", 1)[1]
        headers = {"Authorization": DEV_API_KEY}
        remote = httpx.get(f"http://{address}:{port}/v2/echo/health", headers=headers)
        local = httpx.get(f"http://127.0.0.1:{port}/v2/echo/health", headers=headers)
    assert remote.status_code == 401
    assert local.status_code == 200
    with running_emulator(host="0.0.0.0", api_keys="real-key-1") as emu:
        port = emu.url.rsplit(":", 1)[1]
        headers = {"Authorization": "real-key-1"}
        assert (
            httpx.get(f"http://{address}:{port}/v2/echo/health", headers=headers).status_code == 200
        )


# -- 5. bounded latency; webhooks do not follow redirects ---------------------------------


def test_injected_latency_is_bounded(http: httpx.Client) -> None:
    """Before: any key could make every reply of an endpoint wait for hours."""
    reply = http.put("/_emulator/faults/echo", json={"latency_ms": 3_600_000})
    assert reply.status_code == 400
    assert "latency_ms" in reply.json()["error"]
    assert http.put("/_emulator/faults/echo", json={"latency_ms": 60_000}).status_code == 200
    assert http.put("/_emulator/faults/echo", json={}).status_code == 200


class Recorder:
    """A local HTTP server recording POSTs; ``redirect_to`` makes it answer 307 there."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.paths: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.paths.append(self.path)
                if redirect_to:
                    self.send_response(307)
                    self.send_header("Location", redirect_to)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhooks_do_not_follow_redirects() -> None:
    """Before: a 307 from the webhook URL sent the job (input and output) on to any URL."""
    target = Recorder()
    redirector = Recorder(redirect_to=target.url)
    try:
        with (
            running_emulator(webhook_attempts=2, webhook_retry_interval_s=0.01) as emu,
            emu.client() as api,
        ):
            api.post("/echo/run", json={"input": {"secret": 1}, "webhook": redirector.url})
            wait_until(lambda: emu.stats("echo")["webhooks_failed"] == 1, timeout=20)
            stats = emu.stats("echo")
    finally:
        redirector.close()
        target.close()
    assert stats["webhooks_sent"] == 0
    assert redirector.paths == ["/hook", "/hook"]
    assert target.paths == []
