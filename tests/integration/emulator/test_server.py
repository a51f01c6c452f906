"""Points 7-11 of the emulator issue: auth, limits, bad input, webhooks, faults, stats."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from bridge.emulator.settings import DEV_API_KEY
from bridge.emulator.testing import EmulatorHandle, running_emulator

JSON = {"Content-Type": "application/json"}

# -- 7. auth ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "wrong"}, {"Authorization": ""}],
)
def test_missing_or_wrong_key_is_401_json(
    emulator: EmulatorHandle, headers: dict[str, str]
) -> None:
    reply = httpx.get(f"{emulator.base_url}/echo/health", headers=headers)
    assert reply.status_code == 401
    assert "API key" in reply.json()["error"]


@pytest.mark.parametrize("form", ["Bearer {k}", "bearer {k}", "{k}"])
def test_bearer_or_bare_key_and_any_header_case(emulator: EmulatorHandle, form: str) -> None:
    for name in ("Authorization", "authorization", "AUTHORIZATION"):
        headers = {name: form.format(k=emulator.api_key)}
        assert httpx.get(f"{emulator.base_url}/echo/health", headers=headers).status_code == 200


def test_every_route_needs_a_key(emulator: EmulatorHandle) -> None:
    for method, path in [
        ("POST", "/v2/echo/run"),
        ("GET", "/v2/echo/status/x"),
        ("GET", "/v2/external/job-take/w1"),
        ("GET", "/_emulator/stats"),
        ("POST", "/graphql"),
        ("GET", "/v2/serverless"),
    ]:
        assert httpx.request(method, emulator.url + path).status_code == 401, path


def test_configured_keys_replace_the_dev_key() -> None:
    with running_emulator(api_keys="k-one,k-two") as emu:
        for key, expected in (("k-one", 200), ("k-two", 200), (DEV_API_KEY, 401)):
            with emu.client(key) as client:
                assert client.get("/echo/health").status_code == expected


# -- 8. limits and bad input --------------------------------------------------------------


def test_rate_limit_429_with_retry_after_and_counted() -> None:
    with running_emulator(rate_limits={"run": 5}) as emu, emu.client() as api:
        codes = [api.post("/external/run", json={"input": {}}).status_code for _ in range(7)]
        assert codes == [200] * 5 + [429] * 2
        refused = api.post("/external/run", json={"input": {}})
        assert 1 <= int(refused.headers["Retry-After"]) <= 10
        assert "rate limit for run" in refused.json()["error"]
        assert api.get("/external/health").status_code == 200  # other operations unaffected
        stats = emu.stats("external")
        assert (stats["responses_429"], stats["submissions"]) == (3, 5)


def test_rate_limits_can_be_turned_off() -> None:
    with (
        running_emulator(rate_limits={"run": 1}, rate_limits_enabled=False) as emu,
        emu.client() as api,
    ):
        codes = {api.post("/external/run", json={"input": {}}).status_code for _ in range(5)}
        assert codes == {200}


def test_body_over_run_limit_is_413(api: httpx.Client, emulator: EmulatorHandle) -> None:
    big = {"input": {"blob": "x" * (10 * 1024 * 1024)}}
    reply = api.post("/echo/run", json=big)
    assert reply.status_code == 413
    assert "max is 10485760" in reply.json()["error"]
    huge = api.post("/echo/runsync", content=b"x" * (21 * 1024 * 1024), headers=JSON)
    assert huge.status_code == 413
    assert "error" in huge.json()


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/echo/run", b"{not json", 400, "not valid JSON"),
        ("/echo/run", b"", 400, "body is empty"),
        ("/echo/run", b"[1, 2]", 400, "must be a JSON object"),
        ("/echo/run", b"{}", 400, "'input' is required"),
        ("/echo/run", b'{"input": "text"}', 400, "'input' must be a JSON object"),
        ("/echo/run", b'{"input": {}, "policy": {"ttl": -5}}', 400, "policy.ttl"),
        ("/echo/run", b'{"input": {}, "policy": {"speed": 1}}', 400, "unknown policy"),
        ("/echo/run", b'{"input": {}, "webhook": "ftp://x"}', 400, "webhook"),
        ("/echo/run", b'{"input": {}, "s3Config": 3}', 400, "s3Config"),
        ("/echo/runsync?wait=soon", b'{"input": {}}', 400, "wait must be an integer"),
        ("/nope/run", b'{"input": {}}', 404, "endpoint 'nope' not found"),
        ("/echo/cancel/nope", b"", 404, "job 'nope' not found"),
        ("/echo/retry/nope", b"", 404, "job 'nope' not found"),
    ],
)
def test_bad_input_gets_clear_json_error(
    api: httpx.Client, path: str, body: bytes, status: int, message: str
) -> None:
    reply = api.post(path, content=body, headers=JSON)
    assert reply.status_code == status
    assert message in reply.json()["error"]


def test_unknown_job_and_route_and_method(api: httpx.Client) -> None:
    assert api.get("/echo/status/nope").status_code == 404
    assert api.get("/echo/no-such-op").json()["error"].startswith("no such route")
    assert api.get("/echo/run").status_code == 405
    assert "error" in api.get("/echo/run").json()


# -- 9. webhooks ---------------------------------------------------------------------------


class Receiver:
    """A local webhook receiver that fails the first ``failures`` deliveries."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[int, dict[str, Any]]] = []
        self.done = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                code = 500 if len(receiver.calls) < receiver.failures else 200
                receiver.calls.append((code, body))
                self.send_response(code)
                self.end_headers()
                if code == 200:
                    receiver.done.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=abc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(failures=2)
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


def test_webhook_gets_final_job_and_is_retried(receiver: Receiver) -> None:
    with (
        running_emulator(webhook_retry_interval_s=0.05) as emu,
        emu.client() as api,
    ):
        job = api.post("/echo/run", json={"input": {"v": 7}, "webhook": receiver.url}).json()
        assert receiver.done.wait(10)
        assert [code for code, _ in receiver.calls] == [500, 500, 200]
        body = receiver.calls[-1][1]
        assert (body["id"], body["status"], body["output"]) == (job["id"], "COMPLETED", {"v": 7})
        assert body["input"] == {"v": 7}
        assert body["webhook"] == receiver.url
        assert emu.stats("echo")["webhooks_sent"] == 1


def test_webhook_gives_up_after_configured_attempts() -> None:
    rec = Receiver(failures=10)
    try:
        with (
            running_emulator(webhook_retry_interval_s=0.01, webhook_attempts=2) as emu,
            emu.client() as api,
        ):
            api.post("/fail/run", json={"input": {}, "webhook": rec.url})
            deadline = 100
            while emu.stats("fail")["webhooks_failed"] == 0 and deadline:
                deadline -= 1
                threading.Event().wait(0.05)
            assert emu.stats("fail")["webhooks_failed"] == 1
            assert [c for c, b in rec.calls] == [500, 500]
            assert rec.calls[0][1]["status"] == "FAILED"
    finally:
        rec.server.shutdown()
        rec.server.server_close()


# -- 10. fault injection and 11. inspection ---------------------------------------------


def test_injected_faults() -> None:
    with running_emulator() as emu, emu.client() as api:
        emu.set_faults("echo", error_rate=1.0)
        reply = api.get("/echo/health")
        assert (reply.status_code, reply.json()["error"]) == (
            500,
            "injected fault: internal server error",
        )
        emu.set_faults("echo", rate_limit_rate=1.0)
        reply = api.get("/echo/health")
        assert (reply.status_code, reply.headers["Retry-After"]) == (429, "1")
        emu.set_faults("echo", drop_rate=1.0)
        with pytest.raises(httpx.TransportError):
            api.post("/echo/run", json={"input": {}})
        assert emu.stats("echo")["submissions"] == 0
        emu.set_faults("echo", drop_after_rate=1.0)
        with pytest.raises(httpx.TransportError):
            api.post("/echo/run", json={"input": {}})
        assert emu.stats("echo")["submissions"] == 1  # processed, answer lost
        emu.set_faults("echo")
        assert api.get("/echo/health").status_code == 200
        stats = emu.stats("echo")
        assert stats["faults_injected"] == 4
        assert stats["faults_by_kind"] == {
            "dropped": 1, "rate_limited": 1, "error": 1, "dropped_after": 1, "fail_op": 0
        }  # fmt: skip
        assert api.get("/stream/health").status_code == 200


def test_fault_settings_are_validated(emulator: EmulatorHandle) -> None:
    with httpx.Client(base_url=emulator.url, headers={"Authorization": emulator.api_key}) as c:
        reply = c.put("/_emulator/faults/echo", json={"error_rate": 2})
        assert reply.status_code == 400
        assert "error_rate" in reply.json()["error"]
        assert c.put("/_emulator/faults/nope", json={}).status_code == 404


def test_stats_count_operations() -> None:
    with running_emulator() as emu, emu.client() as api:
        job = api.post("/echo/runsync", json={"input": {}}).json()
        api.get(f"/echo/status/{job['id']}")
        api.post(f"/echo/status/{job['id']}")
        api.post(f"/echo/cancel/{job['id']}")
        api.post("/echo/purge-queue")
        stats = emu.stats("echo")
        assert stats["submissions"] == 1
        assert (stats["cancels"], stats["purges"]) == (1, 1)
        assert stats["requests"] == {"runsync": 1, "status": 2, "cancel": 1, "purge-queue": 1}


# -- the command line ------------------------------------------------------------------


def test_cli_starts_and_refuses_public_bind_without_key() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_EMULATOR_")}
    bridge = [sys.executable, "-m", "bridge"]
    with subprocess.Popen(
        [*bridge, "emulator", "--port", str(port)], stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert f"listening on http://127.0.0.1:{port}/v2" in line
            reply = httpx.get(
                f"http://127.0.0.1:{port}/v2/echo/health", headers={"Authorization": DEV_API_KEY}
            )
            assert reply.status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    refused = subprocess.run(
        [*bridge, "emulator", "--host", "0.0.0.0", "--port", str(port)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert refused.returncode != 0
    assert "refusing to listen on '0.0.0.0'" in refused.stderr
