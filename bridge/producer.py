"""The producer's side of the JSON door, for the CLI and for Python callers without
Celery: send a request, read its replies, cancel it; read health snapshots; purge."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from rich.console import Console
from rich.text import Text

import bridge.runpod as runpod
from bridge.core.breaker import BreakerState
from bridge.core.connection import sync_redis
from bridge.core.keys import keys_for
from bridge.core.ledger import cancel_sync
from bridge.errors import ConfigError, RunpodError
from bridge.settings import BridgeSettings

READER_IDLE_S = 60.0
"""A consumer of the request stream silent this long is taken for gone: a live JSON door
blocks at most a second per read and reads again at once (dead workers' consumers stay
in the group under their host:pid names until someone deletes them)."""


class JsonDoorClient:
    """Talks to the bridge through Redis only (no Celery needed)."""

    def __init__(self, settings: BridgeSettings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or sync_redis(settings.redis_url, settings.sentinel_master)
        self.keys = keys_for(settings)

    def send(
        self,
        route: str,
        job_input: dict[str, Any],
        *,
        request_id: str | None = None,
        reply_to: str | None = None,
        **options: Any,
    ) -> tuple[str, str]:
        """XADD a request; returns ``(request_id, reply_to)``."""
        request_id = request_id or str(uuid.uuid4())
        reply_to = reply_to or self.keys.reply(request_id)
        envelope = {"id": request_id, "route": route, "input": job_input, "reply_to": reply_to}
        envelope.update({k: v for k, v in options.items() if v is not None})
        self.redis.xadd(self.keys.requests_stream, {"payload": json.dumps(envelope)})
        return request_id, reply_to

    def nobody_reading(self) -> str | None:
        """Why no worker may be reading the request stream now (None: one read it within
        :data:`READER_IDLE_S`), from XINFO GROUPS and XINFO CONSUMERS."""
        stream, group = self.keys.requests_stream, self.settings.consumer_group
        try:
            groups: Any = self.redis.xinfo_groups(stream)
        except redis.ResponseError:  # no such key: nothing ever read or wrote the stream
            groups = []
        if not any(_text(g.get("name")) == group for g in groups):
            return f"no worker has ever read {stream} (it has no consumer group {group!r})"
        consumers: Any = self.redis.xinfo_consumers(stream, group)
        if not consumers:
            return f"no worker is reading {stream} (consumer group {group!r} has no consumers)"
        idle_s = min(int(c.get("idle", 0)) for c in consumers) / 1000
        if idle_s > READER_IDLE_S:
            return f"no worker has read {stream} for {idle_s:.0f}s"
        return None

    def replies(self, reply_to: str, timeout: float) -> Iterator[dict[str, Any]]:
        """Yield replies (chunks, then the result) as they arrive, until the result or
        ``timeout`` seconds; a reply list is read destructively."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            item = self.redis.blpop([reply_to], timeout=max(0.01, min(left, 1.0)))
            if item is None:
                continue
            message: dict[str, Any] = json.loads(item[1])
            yield message
            if message.get("type") == "result":
                return

    def submit_and_show(
        self,
        route: str,
        job_input: dict[str, Any],
        *,
        mode: str | None,
        timeout: float,
        request_id: str,
        console: Console | None = None,
    ) -> str:
        """Send, then show state, elapsed time and chunks live; return the final status
        (``WAITING`` if nothing came within ``timeout``)."""
        console = console or Console()
        start = time.monotonic()
        _, reply_to = self.send(route, job_input, request_id=request_id, mode=mode)
        # Text, not markup: outputs and errors come from the endpoint and are shown verbatim
        console.print(
            Text.assemble("request ", (request_id, "cyan"), " sent to route ", (route, "bold"))
        )
        status = "WAITING"
        with console.status("waiting for the endpoint…") as spinner:
            for message in self.replies(reply_to, timeout):
                elapsed = time.monotonic() - start
                if message["type"] == "chunk":
                    console.print(
                        Text(f"  chunk {message['seq']}: {json.dumps(message['output'])}")
                    )
                    spinner.update(f"streaming… {elapsed:.1f}s")
                    continue
                status = str(message["status"])
                color = "green" if status == "COMPLETED" else "red"
                job_id = message.get("job_id")
                console.print(
                    Text.assemble((status, color), f" after {elapsed:.2f}s (job {job_id})")
                )
                if "output" in message:
                    console.print_json(json.dumps(message["output"]))
                for key in ("error", "reason", "message"):
                    if message.get(key):
                        console.print(Text(f"{key}: {message[key]}"))
        if status == "WAITING":
            waited = Text(f"no result within {timeout:g}s", "yellow")
            console.print(Text.assemble(waited, f" (request {request_id} goes on)"))
        return status

    def cancel(self, request_id: str) -> str:
        """Ask for a cancel; returns the request's state (``unknown`` if never seen)."""
        return cancel_sync(self.redis, self.keys, request_id)

    def job_id(self, request_id: str) -> str | None:
        """The endpoint's job id of a request, once it was submitted."""
        raw: Any = self.redis.hget(self.keys.request(request_id), "job_id")
        return raw.decode() if raw else None

    def health(self, route: str, *, live: bool = False) -> dict[str, Any] | None:
        """The last stored health snapshot of ``route``, or a fresh one with ``live``."""
        if live:
            config = self.settings.route(route)
            snapshot: dict[str, Any] = {"route": route, "endpoint_id": config.endpoint_id}
            try:
                health = self._endpoint(route).health(timeout=10)
                snapshot.update(ok=True, health=health, warnings=[])
            except RunpodError as exc:
                snapshot.update(ok=False, error=str(exc), warnings=[f"unreachable: {exc}"])
            except ConfigError as exc:  # no API key for this route: the others are asked
                snapshot.update(ok=False, error=str(exc), warnings=[f"not asked: {exc}"])
            snapshot["at"] = time.time()
            return snapshot
        raw = self.redis.get(self.keys.health(route))
        return json.loads(raw) if raw else None

    def breaker(self, endpoint_id: str) -> str:
        """The endpoint's circuit breaker state as the workers share it."""
        raw: Any = self.redis.hgetall(self.keys.breaker(endpoint_id))
        return BreakerState.read(raw, open_s=self.settings.breaker_open_s, now=time.time()).state

    def purge(self, route: str) -> dict[str, Any]:
        """Purge the endpoint's queue and tell the workers to re-read their jobs."""
        result = self._endpoint(route).purge_queue(timeout=10)
        self.redis.publish(self.keys.purge_channel, route)
        return result

    def _endpoint(self, route: str) -> runpod.Endpoint:
        config = self.settings.route(route)
        return runpod.Endpoint(
            config.endpoint_id,
            api_key=config.api_key().get_secret_value(),
            base_url=config.base_url,
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
