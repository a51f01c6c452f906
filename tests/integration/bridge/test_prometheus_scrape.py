"""A real Prometheus scrapes a real worker and evaluates the shipped alert rules and
every dashboard query: none errors at run time (a many-to-many match or a histogram
quantile on the wrong series would only show there), and the fleet's values arrive.

Prometheus is the binary of Debian's package (scripts/ensure-promtool puts it in
.venv/bin); skipped without it, failed under CI."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import MakeBridge

from bridge.emulator.testing import wait_until

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or shutil.which(
        "prometheus", path=str(Path(sys.executable).parent)
    )
    if found is None:
        message = "prometheus is not installed (scripts/ensure-promtool puts one in .venv/bin)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert found is not None
    return found


@pytest.fixture
def prometheus(tmp_path: Path, make_bridge: MakeBridge) -> Iterator[httpx.Client]:
    """Prometheus on a private port, scraping one worker every second with the shipped
    rules evaluated every second; its HTTP API as a client."""
    binary = prometheus_binary()
    metrics_port, web_port = free_port(), free_port()
    make_bridge(metrics_port=metrics_port)
    shutil.copy(ROOT / "deploy/prometheus/alerts.yml", tmp_path / "alerts.yml")
    shipped = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = shipped["scrape_configs"]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": shipped["rule_files"],
        "scrape_configs": [{
            "job_name": job["job_name"],  # the rules name the job
            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
        }],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{web_port}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=10)
    try:
        wait_until(lambda: _ready(client, proc, log), timeout=60)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)


def _ready(client: httpx.Client, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text()[-3000:]
    try:
        return client.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


def query(client: httpx.Client, expr: str) -> list[dict[str, Any]]:
    answer = client.get("/api/v1/query", params={"query": expr}).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def scalar(client: httpx.Client, expr: str) -> float | None:
    result = query(client, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_evaluates_every_rule_and_dashboard_query(prometheus: httpx.Client) -> None:
    wait_until(lambda: scalar(prometheus, 'up{job="bridge-worker"}') == 1, timeout=60)
    wait_until(lambda: scalar(prometheus, "max(bridge_fleet_workers)") == 1, timeout=30)
    assert scalar(prometheus, "min(bridge_redis_up)") == 1
    assert scalar(prometheus, 'max(bridge_fleet_breaker_state{route="echo"})') == 0

    # Every rule evaluated on the scraped data (after it arrived), without an error.
    arrived = datetime.now(UTC)

    def evaluated() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules").json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def since(rule: dict[str, Any]) -> bool:
        stamp = re.sub(r"(\.\d{6})\d*", r"\1", rule["lastEvaluation"])  # ns to µs
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")) > arrived

    wait_until(lambda: all(since(r) for r in evaluated()), timeout=30)
    rules = evaluated()
    assert len(rules) == len(
        yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    )
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert broken == {}
    # A healthy idle bridge raises no alert (BridgeNoWorker may be pending from the
    # evaluations before the first scrape: it clears with the next one).
    wait_until(lambda: {r["name"] for r in evaluated() if r["state"] != "inactive"} == set(),
               timeout=30)  # fmt: skip

    # Every dashboard query runs (Grafana's variables as Grafana would fill them).
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/bridge.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$route", ".*")
            query(prometheus, expr)
    assert query(prometheus, "max by (route) (bridge_fleet_in_flight)")  # series arrived
