"""The blocking shell over httpx, with an injected in-memory transport (no sockets)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import httpx
import pytest

import bridge.runpod as runpod
from bridge import errors
from bridge.runpod import PollPolicy, RetryPolicy

KEY = "rpa_SHELL_SECRET"
BASE = "https://api.example/v2"

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def served() -> Iterator[Callable[[Handler], runpod.Endpoint]]:
    clients: list[httpx.Client] = []

    def make(handler: Handler) -> runpod.Endpoint:
        client = httpx.Client(transport=httpx.MockTransport(handler))
        clients.append(client)
        return runpod.Endpoint(
            "ep", api_key=KEY, base_url=BASE, client=client, retry=RetryPolicy(backoff=0.0)
        )

    yield make
    for client in clients:
        client.close()


def test_requests_carry_the_bearer_key_and_the_wrapped_body(
    served: Callable[[Handler], runpod.Endpoint],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "j1", "status": "IN_QUEUE"})

    job = served(handler).run({"prompt": "x"}, policy={"ttl": 60000})
    assert job.job_id == "j1"
    (request,) = seen
    assert str(request.url) == f"{BASE}/ep/run"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content) == {"input": {"prompt": "x"}, "policy": {"ttl": 60000}}


def test_status_is_the_whole_object_and_output_the_result(
    served: Callable[[Handler], runpod.Endpoint],
) -> None:
    body = {"id": "j1", "status": "COMPLETED", "output": [1], "delayTime": 2, "workerId": "w"}
    endpoint = served(lambda request: httpx.Response(200, json=body))
    job = endpoint.job("j1")
    assert job.status() == body
    assert job.output() == [1]


def test_transport_failures_are_typed_and_idempotent_calls_retry(
    served: Callable[[Handler], runpod.Endpoint],
) -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"workers": {}})

    assert served(handler).health() == {"workers": {}}
    assert calls["n"] == 3


def test_a_read_timeout_on_run_is_not_resent(
    served: Callable[[Handler], runpod.Endpoint],
) -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(errors.ReadTimeoutError):
        served(handler).run({"a": 1})
    assert calls["n"] == 1


def test_the_key_never_reaches_errors_or_logs(
    served: Callable[[Handler], runpod.Endpoint], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": f"invalid API key {KEY}"})

    endpoint = served(handler)
    with pytest.raises(errors.AuthenticationError) as caught:
        endpoint.health()
    assert caught.value.status_code == 401
    assert "invalid API key" in str(caught.value)
    for text in (str(caught.value), repr(caught.value), caplog.text, repr(endpoint)):
        assert KEY not in text


def test_stream_yields_outputs_in_order(served: Callable[[Handler], runpod.Endpoint]) -> None:
    pages = iter(
        [
            {"status": "IN_PROGRESS", "stream": [{"output": "a"}, {"output": "b"}]},
            {"status": "COMPLETED", "stream": [{"output": "c"}]},
            {"status": "COMPLETED", "stream": []},
        ]
    )
    endpoint = served(lambda request: httpx.Response(200, json=next(pages)))
    assert list(endpoint.job("j1").stream()) == ["a", "b", "c"]


def test_a_plain_polling_client_never_asks_the_server_to_hold() -> None:
    seen: list[httpx.Request] = []
    states = iter(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "j1", "status": next(states), "output": 5})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        poll = PollPolicy(long_poll=False, first=0.0, cap=0.0)
        job = runpod.Job("ep", "j1", api_key=KEY, base_url=BASE, client=client, poll=poll)
        assert job.output(timeout=5) == 5
    assert [r.url.path for r in seen] == ["/v2/ep/status/j1"] * 3
    assert all("wait" not in r.url.params for r in seen)


def test_hooks_see_each_typed_request_and_its_result(
    served: Callable[[Handler], runpod.Endpoint],
) -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "0"}), None])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        return answer or httpx.Response(200, json={"id": "j1", "status": "IN_QUEUE"})

    endpoint = served(handler)
    before: list[tuple[str, str]] = []
    after: list[tuple[str, str]] = []
    hooks = runpod.Hooks(
        before=(lambda request: before.append((request.op, request.endpoint_id)),),
        after=(lambda exchange: after.append((exchange.request.op, exchange.result)),),
    )
    hooked = runpod.Endpoint(
        "ep", api_key=KEY, base_url=BASE, client=endpoint._driver.client,
        retry=RetryPolicy(backoff=0.0), hooks=hooks,
    )  # fmt: skip
    assert hooked.run({"x": 1}).job_id == "j1"
    assert before == [("run", "ep"), ("run", "ep")]
    assert after == [("run", "429"), ("run", "200")]


def test_a_hook_that_needs_awaiting_is_refused_by_the_blocking_client(
    served: Callable[[Handler], runpod.Endpoint],
) -> None:
    endpoint = served(lambda request: httpx.Response(200, json={"id": "j", "status": "IN_QUEUE"}))

    async def waits(request: object) -> None:
        return None

    hooked = runpod.Endpoint(
        "ep", api_key=KEY, base_url=BASE, client=endpoint._driver.client,
        hooks=runpod.Hooks(before=(waits,)),
    )  # fmt: skip
    with pytest.raises(TypeError, match="blocking client cannot wait"):
        hooked.run({"x": 1})
