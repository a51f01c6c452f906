"""The usage examples of SEED_API.md, as written there, against the emulator.

Each example keeps its code (``import runpod`` is ``import bridge.runpod as runpod``);
only the endpoint ids, the template id and the webhook URL point at the emulator and a
local receiver, the monitoring loops sleep 10 ms instead of 5-10 s, and the asyncio
example closes the session it opens.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import bridge.runpod as runpod
from bridge.emulator.testing import EmulatorHandle
from bridge.runpod.http_client import ClientSession

pytestmark = pytest.mark.integration

PAUSE = 0.01  # the examples' time.sleep(5) / time.sleep(10)


@pytest.fixture
def seed_globals(client_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the module-level defaults at the emulator, as a user's environment would."""
    monkeypatch.setattr(runpod, "api_key", None)
    monkeypatch.setattr(runpod, "endpoint_url_base", client_emulator.base_url)
    monkeypatch.setattr(runpod, "api_base_url", client_emulator.url)


@pytest.mark.parametrize("transport", ["rest", "graphql"])
def test_creating_and_managing_endpoints(
    seed_globals: None,
    client_emulator: EmulatorHandle,
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(runpod, "admin_transport", transport)

    # Set credentials
    runpod.set_credentials(client_emulator.api_key)

    # Create a new endpoint
    endpoint_config = runpod.create_endpoint(
        name="image-generation-endpoint",
        template_id="imagegen",
        gpu_ids="NVIDIA GeForce RTX 3070,NVIDIA GeForce RTX 4080",
        idle_timeout=3,
        workers_min=0,
        workers_max=5,
        scaler_type="QUEUE_DELAY",
        scaler_value=2,
        flashboot=True,
    )

    print(f"Created endpoint: {endpoint_config['id']}")

    # List all endpoints
    endpoints = runpod.get_endpoints()
    for ep in endpoints:
        print(f"Endpoint {ep['id']}: {ep['name']} - {ep['status']}")

    out = capsys.readouterr().out
    assert f"Created endpoint: {endpoint_config['id']}" in out
    assert f"Endpoint {endpoint_config['id']}: image-generation-endpoint - ACTIVE" in out
    created = runpod.Endpoint(endpoint_config["id"]).run_sync({"prompt": "p", "steps": 1})
    assert created["image_url"].startswith("https://images.example/")
    runpod.delete_endpoint(endpoint_config["id"])


def test_synchronous_endpoint_usage(
    seed_globals: None, client_emulator: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    runpod.set_credentials(client_emulator.api_key)

    # Create endpoint client
    endpoint = runpod.Endpoint("imagegen")

    # Submit a job and get results synchronously
    try:
        result = endpoint.run_sync(
            {"prompt": "A beautiful sunset over mountains", "steps": 50, "width": 512,
             "height": 512},
            timeout=300,
        )  # fmt: skip

        print("Generated image URL:", result["image_url"])
    except Exception as e:
        print(f"Job failed: {e}")

    # Submit job for async processing
    job = endpoint.run({"prompt": "A futuristic cityscape", "steps": 30})

    # Monitor job status
    while True:
        status = job.status()
        print(f"Job status: {status['status']}")

        if status["status"] in ["COMPLETED", "FAILED"]:
            break

        time.sleep(PAUSE)

    # Get final results
    if status["status"] == "COMPLETED":
        output = job.output()
        print("Results:", output)

    out = capsys.readouterr().out
    assert "Generated image URL: https://images.example/" in out
    assert "Job failed" not in out
    assert "Job status: COMPLETED" in out
    assert "Results: {'image_url': 'https://images.example/" in out


def test_asynchronous_endpoint_usage(
    seed_globals: None, client_emulator: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    runpod.set_credentials(client_emulator.api_key)

    async def process_multiple_jobs() -> list[Any]:
        session = ClientSession()
        endpoint = runpod.AsyncioEndpoint("imagegen", session)

        # Submit multiple jobs concurrently
        jobs = []
        prompts = ["A cat in a hat", "A dog in space", "A robot playing piano"]

        for prompt in prompts:
            job = await endpoint.run({"prompt": prompt, "steps": 20})
            jobs.append(job)

        # Wait for all jobs to complete
        results = []
        for job in jobs:
            try:
                output = await job.output(timeout=180)
                results.append(output)
            except Exception as e:
                print(f"Job failed: {e}")
                results.append(None)

        await session.close()  # not in the seed: an unclosed session leaks its sockets
        return results

    # Run async job processing
    results = asyncio.run(process_multiple_jobs())
    for i, result in enumerate(results):
        if result:
            print(f"Job {i + 1} completed: {result}")

    assert [r["prompt"] for r in results] == [
        "A cat in a hat",
        "A dog in space",
        "A robot playing piano",
    ]
    assert "Job failed" not in capsys.readouterr().out


def test_streaming_job_output(
    seed_globals: None, client_emulator: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    runpod.set_credentials(client_emulator.api_key)

    endpoint = runpod.Endpoint("storyteller")

    # Submit job that produces streaming output
    job = endpoint.run({"prompt": "Generate a long story", "stream": True})

    # Stream results as they arrive
    print("Streaming output:")
    for chunk in job.stream():
        if "text" in chunk:
            print(chunk["text"], end="", flush=True)
        elif "status" in chunk:
            print(f"\nStatus: {chunk['status']}")

    print("\nStream completed")

    out = capsys.readouterr().out
    assert "Once upon a time, Generate a long story lived happily." in out
    assert out.rstrip().endswith("Stream completed")


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server that records the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/webhook/job-complete", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_job_management_and_error_handling(
    seed_globals: None,
    client_emulator: EmulatorHandle,
    webhook_receiver: tuple[str, list[dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    runpod.set_credentials(client_emulator.api_key)
    webhook_url, received = webhook_receiver

    endpoint = runpod.Endpoint("imagegen")

    # Submit job with webhook notification
    job = endpoint.run({"prompt": "A complex 3D render", "steps": 100}, webhook=webhook_url)

    # Monitor with timeout and cancellation
    start_time = time.time()
    max_runtime = 600  # 10 minutes

    try:
        while True:
            status = job.status()
            elapsed = time.time() - start_time

            print(f"Job {job.job_id}: {status['status']} (elapsed: {elapsed:.1f}s)")

            if status["status"] in ["COMPLETED", "FAILED"]:
                break

            # Cancel if taking too long
            if elapsed > max_runtime:
                print("Job taking too long, cancelling...")
                cancel_result = job.cancel()
                print(f"Cancelled: {cancel_result}")
                break

            time.sleep(PAUSE)

        # Get results if completed
        if status["status"] == "COMPLETED":
            output = job.output()
            print("Job completed successfully:", output)

    except Exception as e:
        print(f"Error monitoring job: {e}")
        # Try to cancel on error
        try:  # noqa: SIM105 - the seed's own code, kept as written
            job.cancel()
        except:  # noqa: E722, S110 - the seed's own code, kept as written
            pass

    out = capsys.readouterr().out
    assert "Job completed successfully: {'image_url': " in out
    assert "Error monitoring job" not in out
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(PAUSE)
    assert received[0]["id"] == job.job_id
    assert received[0]["status"] == "COMPLETED"
