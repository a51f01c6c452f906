"""Point 1 of the emulator issue: the queue API's routes, shapes and ids."""

from __future__ import annotations

import re
from typing import Any

import httpx

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def wait_final(api: httpx.Client, endpoint: str, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = api.get(f"/{endpoint}/status-sync/{job_id}?wait=10000").json()
    return body


def test_run_then_status_has_documented_shape(api: httpx.Client) -> None:
    reply = api.post("/echo/run", json={"input": {"prompt": "hi", "sleep_ms": 20}})
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "IN_QUEUE"
    assert re.fullmatch(UUID + "-u1", body["id"])
    final = wait_final(api, "echo", body["id"])
    assert final["status"] == "COMPLETED"
    assert final["output"] == {"prompt": "hi", "sleep_ms": 20}
    assert isinstance(final["delayTime"], int)
    assert isinstance(final["executionTime"], int)
    assert final["executionTime"] >= 20
    assert re.fullmatch(r"[0-9a-z]{14}", final["workerId"])


def test_runsync_finished_in_time_returns_full_job(api: httpx.Client) -> None:
    body = api.post("/echo/runsync", json={"input": {"x": 1}}).json()
    assert re.fullmatch("sync-" + UUID + "-e1", body["id"])
    assert body["status"] == "COMPLETED"
    assert body["output"] == {"x": 1}
    assert {"delayTime", "executionTime", "workerId"} <= body.keys()


def test_runsync_not_finished_returns_id_and_state(api: httpx.Client) -> None:
    body = api.post("/echo/runsync?wait=50", json={"input": {"sleep_ms": 2000}}).json()
    assert set(body) == {"id", "status"}
    assert body["status"] in ("IN_QUEUE", "IN_PROGRESS")
    api.post(f"/echo/cancel/{body['id']}")


def test_status_sync_holds_until_final(api: httpx.Client) -> None:
    job = api.post("/echo/run", json={"input": {"sleep_ms": 150}}).json()
    assert wait_final(api, "echo", job["id"])["status"] == "COMPLETED"


def test_status_sync_returns_current_state_when_wait_expires(api: httpx.Client) -> None:
    job = api.post("/echo/run", json={"input": {"sleep_ms": 3000}}).json()
    body = api.get(f"/echo/status-sync/{job['id']}?wait=20").json()
    assert body["status"] in ("IN_QUEUE", "IN_PROGRESS")
    api.post(f"/echo/cancel/{job['id']}")


def test_status_and_stream_accept_get_and_post(api: httpx.Client) -> None:
    job = api.post("/echo/runsync", json={"input": {}}).json()
    for method in ("GET", "POST"):
        status = api.request(method, f"/echo/status/{job['id']}")
        stream = api.request(method, f"/echo/stream/{job['id']}")
        assert status.json()["status"] == "COMPLETED"
        assert stream.json() == {"id": job["id"], "status": "COMPLETED", "stream": []}


def test_stream_delivers_each_chunk_once_in_order(api: httpx.Client) -> None:
    job = api.post("/stream/run", json={"input": {"n": 25, "interval_ms": 2}}).json()
    seen: list[Any] = []
    for _ in range(200):
        body = api.get(f"/stream/stream/{job['id']}?wait=2000").json()
        seen.extend(chunk["output"] for chunk in body["stream"])
        if body["status"] == "COMPLETED" and not body["stream"]:
            break
    assert seen == [{"i": k} for k in range(25)]
    # a streaming job's /status output is the aggregate (the endpoint sets it)
    assert api.get(f"/stream/status/{job['id']}").json()["output"] == seen


def test_stream_wait_holds_for_new_chunks(api: httpx.Client) -> None:
    job = api.post("/stream/run", json={"input": {"n": 2, "interval_ms": 100}}).json()
    first = api.get(f"/stream/stream/{job['id']}?wait=5000").json()
    assert first["stream"] == [{"output": {"i": 0}}]


def test_stream_with_wait_zero_answers_at_once(api: httpx.Client) -> None:
    job = api.post("/stream/run", json={"input": {"n": 1, "interval_ms": 1000}}).json()
    body = api.get(f"/stream/stream/{job['id']}?wait=0").json()
    assert body["stream"] == []
    assert body["status"] in ("IN_QUEUE", "IN_PROGRESS")
    api.post(f"/stream/cancel/{job['id']}")


def test_stream_holds_by_default_so_a_client_without_sleeps_does_not_spin(
    api: httpx.Client,
) -> None:
    """Issue 16 item 8: RunPod's JS SDK polls ``/stream`` back to back and relies on the
    server holding the request; a request without ``?wait=`` is held until a chunk comes
    (up to ``stream_default_wait_ms``, 5 s by default)."""
    job = api.post("/stream/run", json={"input": {"n": 1, "interval_ms": 300}}).json()
    polls = 0
    seen: list[Any] = []
    while True:
        body = api.get(f"/stream/stream/{job['id']}").json()
        polls += 1
        seen.extend(chunk["output"] for chunk in body["stream"])
        if body["status"] == "COMPLETED" and not body["stream"]:
            break
        assert polls < 10, f"the stream was not held: {polls} polls for one 300 ms chunk"
    assert seen == [{"i": 0}]


def test_body_less_posts_are_fine(api: httpx.Client) -> None:
    job = api.post("/external/run", json={"input": {}}).json()
    empty_json = api.post(
        f"/external/cancel/{job['id']}", headers={"Content-Type": "application/json"}
    )
    assert empty_json.status_code == 200
    assert api.post("/external/purge-queue").status_code == 200


def test_health_reports_the_superset_of_keys(api: httpx.Client) -> None:
    body = api.get("/echo/health").json()
    assert set(body["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert set(body["workers"]) == {
        "idle",
        "initializing",
        "ready",
        "running",
        "throttled",
        "unhealthy",
    }
    assert all(isinstance(v, int) for part in body.values() for v in part.values())


def test_purge_removes_queued_jobs_which_read_cancelled_purged(api: httpx.Client) -> None:
    ids = [api.post("/external/run", json={"input": {"k": k}}).json()["id"] for k in range(3)]
    body = api.post("/external/purge-queue").json()
    assert body == {"removed": 3, "status": "completed"}
    for job_id in ids:
        status = api.get(f"/external/status/{job_id}").json()
        assert (status["status"], status["error"]) == ("CANCELLED", "purged")
