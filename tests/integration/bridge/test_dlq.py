"""Dead letters: what lands there, and `bridge dlq list | replay | purge`."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import Bridge, MakeBridge

from bridge.emulator.settings import EndpointConfig
from bridge.emulator.testing import EmulatorHandle, wait_until


def cli(bridge: Bridge, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "dlq", *args],
        env={**bridge.env, "COLUMNS": "250"}, input=stdin, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_dead_letters_listed_replayed_and_purged(
    make_bridge: MakeBridge, emulator: EmulatorHandle
) -> None:
    bridge = make_bridge(routes={"late": {"endpoint_id": "late-endpoint"}})
    dlq = bridge.settings.dlq_stream
    request_id, reply_to = bridge.producer.send("late", {"v": 1})
    first = bridge.result(reply_to)
    assert (first["status"], first["reason"]) == ("FAILED", "endpoint_not_found")
    assert "not found" in first["message"]
    bridge.redis.xadd(bridge.settings.requests_stream, {"payload": b"{broken"})
    wait_until(lambda: bridge.redis.xlen(dlq) == 2)

    listed = cli(bridge, "list")
    assert listed.returncode == 0, listed.stderr
    assert "endpoint_not_found" in listed.stdout
    assert "invalid_json" in listed.stdout
    assert "2 dead letter(s)" in listed.stdout
    only_late = cli(bridge, "list", "--route", "late")
    assert "1 dead letter(s)" in only_late.stdout

    # the request's dead letter follows its reply (written once the finalize is won), so
    # the broken entry's may come first: find it by its route, not by its place
    entry = next(e for e in bridge.redis.xrange(dlq) if e[1].get(b"route") == b"late")
    fields = {k.decode(): v.decode() for k, v in entry[1].items()}
    assert (fields["request_id"], fields["route"]) == (request_id, "late")
    assert json.loads(fields["payload"])["input"] == {"v": 1}
    assert "NotFoundError" in json.loads(fields["details"])["attempts"][0]

    # The endpoint now exists: the replayed request runs, under the same id.
    emulator.call(
        lambda: emulator.engine.add_endpoint(
            EndpointConfig(id="late-endpoint", templateId="echo", workersMax=2, coldStartMs=0)
        )
    )
    replayed = cli(bridge, "replay", entry[0].decode())
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"as request {request_id}" in replayed.stdout
    second = bridge.result(reply_to)
    assert (second["id"], second["status"], second["output"]) == (request_id, "COMPLETED", {"v": 1})
    assert bridge.redis.xlen(dlq) == 1

    unreplayable = cli(bridge, "replay", "--all")
    assert unreplayable.returncode == 1
    assert "holds no replayable request (invalid_json)" in unreplayable.stdout

    refused = cli(bridge, "purge", stdin="n\n")
    assert refused.returncode != 0
    assert bridge.redis.xlen(dlq) == 1
    purged = cli(bridge, "purge", "--yes")
    assert "removed 1 dead letter(s)" in purged.stdout
    assert bridge.redis.xlen(dlq) == 0
    assert cli(bridge, "replay").returncode != 0  # neither an id nor --all
