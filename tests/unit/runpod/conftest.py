"""Drive the client's sans-IO flows against a scripted server and a fake clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.errors import TransportError
from bridge.runpod import _flows as flows
from bridge.runpod import _protocol as wire
from bridge.runpod._policy import PollPolicy, RetryPolicy, Runtime

Answer = wire.Response | TransportError | tuple[wire.Response, float]


def reply(status: int = 200, body: Any = None, *, retry_after: str | None = None) -> wire.Response:
    """A server reply with a JSON body (``body`` bytes are sent as they are)."""
    raw = body if isinstance(body, bytes) else json.dumps({} if body is None else body).encode()
    return wire.Response(status, raw, retry_after)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """Runs a flow: every Send is answered by ``server``; every Sleep advances the clock.

    ``server`` is a list of answers (used in order) or a function of the request. An
    answer ``(response, seconds)`` means the server held the request that long.
    """

    server: Callable[[wire.Request], Answer] | list[Answer]
    clock: FakeClock = field(default_factory=FakeClock)
    rand: Callable[[], float] = lambda: 0.5
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    latency: float = 0.001
    sent: list[wire.Request] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)
    emitted: list[Any] = field(default_factory=list)

    @property
    def rt(self) -> Runtime:
        return Runtime(retry=self.retry, poll=self.poll, clock=self.clock, rand=self.rand)

    @property
    def ops(self) -> list[str]:
        return [r.op for r in self.sent]

    def answer(self, request: wire.Request) -> wire.Response | TransportError:
        if callable(self.server):
            answer = self.server(request)
        else:
            assert self.server, f"the script has no answer left for {request.op}"
            answer = self.server.pop(0)
        held = 0.0
        if isinstance(answer, tuple):
            answer, held = answer
        self.clock.now += self.latency + min(held, request.timeout)
        return answer

    def run(self, flow: flows.Flow[Any]) -> Any:
        answer: flows.Reply = None
        while True:
            try:
                step = flow.send(answer)
            except StopIteration as stop:
                return stop.value
            answer = None
            if isinstance(step, flows.Send):
                self.sent.append(step.request)
                answer = self.answer(step.request)
            elif isinstance(step, flows.Sleep):
                assert step.seconds >= 0
                self.slept.append(step.seconds)
                self.clock.now += step.seconds
            else:
                self.emitted.append(step.value)


@pytest.fixture
def harness() -> Callable[..., Harness]:
    def make(server: Any, **kwargs: Any) -> Harness:
        return Harness(server, **kwargs)

    return make


@pytest.fixture
def target() -> wire.Target:
    return wire.Target("https://api.example/v2", "ep1")


@pytest.fixture(name="reply")
def reply_fixture() -> Callable[..., wire.Response]:
    """``reply(status, body, retry_after=None)``: build a server reply."""
    return reply
