"""Issue 16 item 6: webhooks as RunPod sends them.

Sources: RunPod's send-requests page ("Webhook notifications": a POST with the
``/status`` information; the receiver returns 200; up to 2 more tries 10 s apart),
runpod-python issues #409 (the payload: status fields plus ``input`` and ``webhook``) and
#410 / PR #585 (FAILED jobs are sent too).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bridge.emulator.settings import EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator, wait_until

pytestmark = pytest.mark.integration


class Receiver:
    """A webhook receiver answering ``codes`` in turn (then 200), recording each body."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = list(codes)
        self.calls: list[tuple[int, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = receiver.codes.pop(0) if receiver.codes else 200
                receiver.calls.append((code, body))
                self.send_response(code)
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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver([])
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorHandle]:
    """Fast retries (the interval is a setting; RunPod's is 10 s); ``slow`` times out."""
    templates = [TemplateConfig(id=t, imageName=t) for t in ("echo", "fail", "external")]
    fast: dict[str, Any] = {"workersMax": 10, "scalerType": "REQUEST_COUNT", "scalerValue": 1}
    endpoints = [
        EndpointConfig(id="echo", templateId="echo", coldStartMs=0, **fast),
        EndpointConfig(id="fail", templateId="fail", coldStartMs=0, **fast),
        EndpointConfig(id="slow", templateId="echo", coldStartMs=0, executionTimeoutMs=50, **fast),
        EndpointConfig(id="external", templateId="external", workersMax=0),
    ]
    with running_emulator(
        templates=templates, endpoints=endpoints, webhook_retry_interval_s=0.05
    ) as handle:
        yield handle


def submit(emu: EmulatorHandle, endpoint: str, job_input: Any, hook: str) -> str:
    with emu.client() as api:
        job_id: str = api.post(
            f"/{endpoint}/run", json={"input": job_input, "webhook": hook}
        ).json()["id"]
    return job_id


def test_a_completed_job_is_sent_with_status_fields_input_and_webhook(
    emu: EmulatorHandle, receiver: Receiver
) -> None:
    job = submit(emu, "echo", {"v": 7}, receiver.url)
    wait_until(lambda: len(receiver.calls) == 1)
    _, body = receiver.calls[0]
    assert list(body) == ["delayTime", "executionTime", "id", "input", "output", "status",
                          "webhook"]  # fmt: skip
    assert (body["id"], body["status"], body["output"]) == (job, "COMPLETED", {"v": 7})
    assert (body["input"], body["webhook"]) == ({"v": 7}, receiver.url)


def test_a_failed_job_is_sent_with_its_error(emu: EmulatorHandle, receiver: Receiver) -> None:
    job = submit(emu, "fail", {"message": "bad"}, receiver.url)
    wait_until(lambda: len(receiver.calls) == 1)
    _, body = receiver.calls[0]
    assert (body["id"], body["status"]) == (job, "FAILED")
    assert json.loads(body["error"])["error_message"] == "bad"
    assert "workerId" not in body
    assert "retries" not in body


def test_cancelled_timed_out_and_purged_jobs_are_not_sent(
    emu: EmulatorHandle, receiver: Receiver
) -> None:
    before = emu.stats("echo")["webhooks_sent"]
    with emu.client() as api:
        cancelled = submit(emu, "external", {}, receiver.url)
        api.post(f"/external/cancel/{cancelled}")
        submit(emu, "external", {}, receiver.url)
        assert api.post("/external/purge-queue").json()["removed"] == 1
        timed_out = submit(emu, "slow", {"sleep_ms": 5000}, receiver.url)
        ended = api.get(f"/slow/status-sync/{timed_out}", params={"wait": 10_000}).json()
        assert ended["status"] == "TIMED_OUT"
        # A job sent after them all: once its webhook is in, theirs would have been too.
        submit(emu, "echo", {"last": True}, receiver.url)
    wait_until(lambda: emu.stats("echo")["webhooks_sent"] == before + 1)
    assert [body["input"] for _, body in receiver.calls] == [{"last": True}]


def test_only_200_is_success_and_there_are_two_retries(emu: EmulatorHandle) -> None:
    rec = Receiver([201, 204, 202])
    try:
        before = emu.stats("echo")["webhooks_failed"]
        submit(emu, "echo", {"v": 1}, rec.url)
        wait_until(lambda: emu.stats("echo")["webhooks_failed"] == before + 1)
        assert [code for code, _ in rec.calls] == [201, 204, 202]  # 3 deliveries in all
    finally:
        rec.close()
