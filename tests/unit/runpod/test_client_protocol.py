"""Wire rules of the client: bodies, requests, parsing, error mapping, outcomes."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from bridge import errors
from bridge.runpod import _protocol as wire
from bridge.runpod._config import Secret

KEY = "rpa_SECRET_KEY_123"


def response(status: int, body: Any, retry_after: str | None = None) -> wire.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return wire.Response(status, raw, retry_after)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"prompt": "x"}, {"input": {"prompt": "x"}}),
        ({"input": {}}, {"input": {}}),
        ({"input": 0}, {"input": 0}),
        ({"input": []}, {"input": []}),
        ({"input": None}, {"input": None}),
        ({"input": {"a": 1}, "webhook": "https://h"}, {"input": {"a": 1}, "webhook": "https://h"}),
        ("text", {"input": "text"}),
        ([1, 2], {"input": [1, 2]}),
        (None, {"input": None}),
        ({}, {"input": {}}),
    ],
)
def test_input_is_wrapped_unless_it_is_a_full_body(given: Any, expected: Any) -> None:
    assert wire.build_body(given) == expected


def test_webhook_policy_and_s3_config_are_merged_and_win() -> None:
    body = wire.build_body(
        {"input": {"a": 1}, "webhook": "https://old"},
        webhook="https://new",
        policy={"ttl": 60000},
        s3_config={"bucketName": "b"},
    )
    assert body == {
        "input": {"a": 1},
        "webhook": "https://new",
        "policy": {"ttl": 60000},
        "s3Config": {"bucketName": "b"},
    }


def test_build_body_does_not_mutate_the_callers_dict() -> None:
    given = {"input": {"a": 1}}
    wire.build_body(given, webhook="https://h")
    assert given == {"input": {"a": 1}}


def test_urls_quote_ids() -> None:
    target = wire.Target("https://api.runpod.ai/v2", "ep/1")
    assert target.url("status", "a/b c") == "https://api.runpod.ai/v2/ep%2F1/status/a%2Fb%20c"
    assert target.url("health") == "https://api.runpod.ai/v2/ep%2F1/health"


def test_run_requests(target: wire.Target) -> None:
    run = wire.run_request(target, {"input": {"a": 1}})
    assert (run.method, run.url, run.idempotent) == ("POST", f"{target.base_url}/ep1/run", False)
    assert json.loads(run.content or b"") == {"input": {"a": 1}}
    sync = wire.run_request(target, {"input": 1}, sync_wait=30.0)
    assert sync.url.endswith("/ep1/runsync")
    assert sync.params == {"wait": "30000"}
    assert sync.timeout > 30.0
    assert not sync.idempotent


def test_unserialisable_input_is_a_type_error(target: wire.Target) -> None:
    with pytest.raises(TypeError, match="JSON"):
        wire.run_request(target, {"input": {1, 2}})


@pytest.mark.parametrize(
    ("op", "method", "idempotent"),
    [
        ("status", "GET", True),
        ("status-sync", "GET", True),
        ("stream", "GET", True),
        ("cancel", "POST", True),
        ("retry", "POST", False),
    ],
)
def test_job_requests(target: wire.Target, op: str, method: str, idempotent: bool) -> None:
    request = wire.job_request(target, op, "j1")
    assert (request.method, request.idempotent, request.job_id) == (method, idempotent, "j1")
    assert request.url == f"{target.base_url}/ep1/{op}/j1"
    assert request.content is None


def test_a_held_request_asks_for_wait_and_reads_longer(target: wire.Target) -> None:
    request = wire.job_request(target, "status-sync", "j1", hold=2.5)
    assert request.params == {"wait": "2500"}
    assert request.timeout == 2.5 + wire.HOLD_SLACK


def test_endpoint_requests(target: wire.Target) -> None:
    health = wire.endpoint_request(target, "health", timeout=3)
    purge = wire.endpoint_request(target, "purge-queue", timeout=3)
    assert (health.method, health.idempotent) == ("GET", True)
    assert (purge.method, purge.idempotent, purge.content) == ("POST", False, None)


def test_headers_carry_a_bearer_key_and_a_content_type_only_with_a_body(
    target: wire.Target,
) -> None:
    secret = Secret(KEY)
    run = wire.run_request(target, {"input": 1}).headers(secret)
    assert run["Authorization"] == f"Bearer {KEY}"
    assert run["Content-Type"] == "application/json"
    cancel = wire.job_request(target, "cancel", "j").headers(None)
    assert "Authorization" not in cancel
    assert "Content-Type" not in cancel


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, errors.BadRequestError),
        (422, errors.BadRequestError),
        (401, errors.AuthenticationError),
        (403, errors.AuthenticationError),
        (404, errors.NotFoundError),
        (413, errors.PayloadTooLargeError),
        (429, errors.RateLimitedError),
        (500, errors.ServerError),
        (503, errors.ServerError),
        (409, errors.APIError),
    ],
)
def test_every_error_status_maps_to_a_typed_error_with_the_servers_message(
    target: wire.Target, status: int, kind: type[errors.APIError]
) -> None:
    request = wire.job_request(target, "status", "j1")
    with pytest.raises(kind) as caught:
        wire.parse(request, response(status, {"error": "the reason"}))
    assert type(caught.value) is kind
    assert caught.value.status_code == status
    assert caught.value.message == "the reason"
    assert (caught.value.endpoint_id, caught.value.job_id) == ("ep1", "j1")
    assert "the reason" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"message": "rest v1 style"}, "rest v1 style"),
        ({"title": "Unprocessable", "detail": "rfc 9457 detail"}, "rfc 9457 detail"),
        (b"<html>Bad gateway</html>", "<html>Bad gateway</html>"),
        (b"", "HTTP 502 with an empty body"),
    ],
)
def test_error_messages_from_other_body_shapes(
    target: wire.Target, body: Any, message: str
) -> None:
    with pytest.raises(errors.ServerError, match=message):
        wire.parse(wire.endpoint_request(target, "health"), response(502, body))


def test_429_carries_retry_after(target: wire.Target) -> None:
    with pytest.raises(errors.RateLimitedError) as caught:
        wire.parse(wire.endpoint_request(target, "health"), response(429, {"error": "slow"}, "3"))
    assert caught.value.retry_after == 3.0


def test_retry_after_forms() -> None:
    assert wire.parse_retry_after("2.5") == 2.5
    assert wire.parse_retry_after(None) is None
    assert wire.parse_retry_after("soon") is None
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert wire.parse_retry_after(date, now=1445412480.0) == 10.0
    assert wire.parse_retry_after(date, now=1445412500.0) == 0.0


def test_success_replies(target: wire.Target) -> None:
    request = wire.job_request(target, "cancel", "j1")
    assert wire.parse(request, wire.Response(204, b"")) == {}
    assert wire.parse(request, response(200, {"id": "j1", "status": "CANCELLED"}))["id"] == "j1"
    with pytest.raises(errors.ProtocolError, match="not JSON"):
        wire.parse(request, wire.Response(200, b"<html>proxy</html>"))


def test_a_job_reply_needs_its_fields(target: wire.Target) -> None:
    run = wire.run_request(target, {"input": 1})
    with pytest.raises(errors.ProtocolError, match="id"):
        wire.parse_job(run, response(200, {"status": "IN_QUEUE"}))
    status = wire.job_request(target, "status", "j1")
    with pytest.raises(errors.ProtocolError):
        wire.parse_job(status, response(200, ["not", "a", "job"]))
    assert wire.parse_job(status, response(200, {"status": "IN_QUEUE"})) == {"status": "IN_QUEUE"}


def test_a_key_echoed_in_an_error_body_is_masked(target: wire.Target) -> None:
    secret = Secret(KEY)
    echoed = json.dumps({"error": f"bad key {KEY}"}).encode()
    received = wire.Response.received(401, echoed, None, secret)
    with pytest.raises(errors.AuthenticationError) as caught:
        wire.parse(wire.endpoint_request(target, "health"), received)
    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value)
    # success bodies are left alone: they are the job's own data
    assert wire.Response.received(200, echoed, None, secret).body == echoed


def test_log_lines_never_carry_the_key(
    target: wire.Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.runpod")
    request = wire.job_request(target, "status-sync", "j1", hold=1.0)
    wire.log_exchange(request, wire.Response(200, b"{}"))
    assert caplog.messages == [f"GET {target.base_url}/ep1/status-sync/j1?wait=1000 -> 200"]


def test_completed_job_gives_its_output() -> None:
    job = {"id": "j", "status": "COMPLETED", "output": {"x": 1}}
    assert wire.job_outcome(job, endpoint_id="e", job_id="j") == {"x": 1}
    assert wire.job_outcome({"status": "COMPLETED"}, endpoint_id="e", job_id="j") is None


@pytest.mark.parametrize(
    ("job", "kind"),
    [
        ({"status": "FAILED", "error": "boom"}, errors.JobFailed),
        ({"status": "CANCELLED"}, errors.JobCancelled),
        ({"status": "TIMED_OUT"}, errors.JobTimedOut),
    ],
)
def test_other_final_states_raise_typed_errors(job: dict[str, Any], kind: type) -> None:
    with pytest.raises(kind) as caught:
        wire.job_outcome(job, endpoint_id="e", job_id="j")
    assert caught.value.job_id == "j"
    assert caught.value.status == job["status"]
    assert caught.value.job == job


def test_failed_job_error_from_a_handler_exception_is_summarised() -> None:
    error = json.dumps({"error_type": "ValueError", "error_message": "bad prompt"})
    with pytest.raises(errors.JobFailed, match="ValueError: bad prompt") as caught:
        wire.job_outcome({"status": "FAILED", "error": error}, endpoint_id="e", job_id="j")
    assert caught.value.error == error


def test_timed_out_is_also_a_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        wire.job_outcome({"status": "TIMED_OUT"}, endpoint_id="e", job_id="j")


def test_a_non_final_state_has_no_outcome() -> None:
    with pytest.raises(ValueError, match="not final"):
        wire.job_outcome({"status": "IN_PROGRESS"}, endpoint_id="e", job_id="j")


def test_final_states_include_cancelled() -> None:
    assert {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"} == wire.FINAL_STATES


def test_chunk_output() -> None:
    assert wire.chunk_output({"output": 1, "metrics": {}}) == 1
    assert wire.chunk_output({"output": None}) is None
    assert wire.chunk_output("raw") == "raw"
