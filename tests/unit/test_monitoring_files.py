"""The monitoring files (deploy/prometheus, deploy/grafana, the compose `monitoring`
profile), checked without a Prometheus or Grafana server: they parse, every PromQL
expression parses (promql-parser), every metric they name is one a worker exports (the
names are collected from the bridge's own Prometheus registry and the fleet collector,
not from a hand-written list), and promtool checks the rules and runs their unit tests
(deploy/prometheus/alerts_test.yml) where it is installed (scripts/ensure-promtool)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, Metric

import bridge.core.metrics  # noqa: F401  (registers the worker's own metrics)
from bridge.core.fleet_metrics import FleetCollector
from bridge.settings import BridgeSettings

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "bridge.json"

PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for every scrape target."""

# Suffixes each metric type adds to its family's name in the exposition format.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def sample_names(families: Iterator[Metric] | list[Metric]) -> set[str]:
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name a worker's /metrics can hold: its registry (the per-process
    metrics) and the fleet collector it registers next to them."""
    fleet = FleetCollector(fakeredis.FakeRedis(), BridgeSettings.load())  # describe(): no read
    return sample_names(REGISTRY.collect()) | sample_names(fleet.describe())


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (fails on a selector without one)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


# -- Prometheus ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_the_name_check_sees_real_and_unknown_names(exported: set[str]) -> None:
    assert {"bridge_jobs_finished_total", "bridge_request_latency_seconds_bucket",
            "bridge_in_flight", "bridge_fleet_breaker_state", "bridge_redis_up",
            "bridge_fleet_dead_letters_added_total"} <= exported  # fmt: skip
    expr = "sum(rate(bridge_jobs_finishd_total[5m])) / on() group_left max(bridge_redis_up)"
    assert metric_names(expr) - exported == {"bridge_jobs_finishd_total"}
    with pytest.raises(ValueError):  # noqa: PT011  (promql-parser raises a bare ValueError)
        promql_parser.parse("max by (route) (bridge_fleet_waiting > 300")


def test_the_alerts_the_operators_need_are_there(rules: list[dict[str, Any]]) -> None:
    alerts = {rule["alert"] for rule in rules}
    assert {
        "BridgeBreakerOpen", "BridgeDeadLettersGrowing", "BridgeWorkerLeaseLost",
        "BridgeRequestsWaiting", "BridgeRedisDown", "BridgeWorkerDown",
    } <= alerts  # fmt: skip
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_every_metric_in_the_alert_rules_is_exported(
    rules: list[dict[str, Any]], exported: set[str]
) -> None:
    for rule in rules:
        unknown = metric_names(rule["expr"]) - exported - PROMETHEUS_OWN
        assert not unknown, f"{rule['alert']} names metrics no worker exports: {unknown}"


def test_every_alert_has_a_promtool_unit_test(rules: list[dict[str, Any]]) -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]  # a test that sees it fire
    }
    assert {rule["alert"] for rule in rules} == tested


def test_prometheus_scrapes_the_workers_where_compose_serves_metrics() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for name in config["rule_files"]:
        assert (PROMETHEUS / name).is_file(), name
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "bridge-worker"]
    (sd,) = job["dns_sd_configs"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    command = worker["command"]
    assert sd["names"] == ["worker"]
    assert sd["port"] == int(command[command.index("--metrics-port") + 1])
    assert worker["environment"]["BRIDGE_METRICS_HOST"] == "0.0.0.0"
    # the rules' job label is this job's name
    assert 'up{job="bridge-worker"}' in (PROMETHEUS / "alerts.yml").read_text()


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which(
        "promtool", path=str(Path(sys.executable).parent)
    )
    if found is None:
        message = "promtool is not installed (scripts/ensure-promtool puts one in .venv/bin)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, check=False, timeout=120,
        cwd=PROMETHEUS,
    )  # fmt: skip


def test_promtool_checks_the_config_and_the_rules() -> None:
    checked = run_promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def test_promtool_runs_the_alert_unit_tests(tmp_path: Path) -> None:
    tested = run_promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # the runner is live: an alert that no longer fires fails its test
    text = (PROMETHEUS / "alerts.yml").read_text()
    broken = text.replace("bridge_fleet_oldest_waiting_seconds) > 300",
                          "bridge_fleet_oldest_waiting_seconds) > 3000")  # fmt: skip
    assert broken != text
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path)
    refused = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "BridgeRequestsWaiting" in refused.stdout + refused.stderr


# -- Grafana -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold theirs


GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def as_promql(expr: str, variables: set[str]) -> str:
    """A panel's query with Grafana's variables replaced the way Grafana would."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    for name in variables:
        expr = expr.replace(f"${name}", ".*")
    assert "$" not in expr, f"an undefined variable in {expr!r}"
    return expr


def test_every_metric_on_the_dashboard_is_exported(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    queries = 0
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            names = metric_names(as_promql(target["expr"], variables))
            unknown = names - exported - PROMETHEUS_OWN
            assert not unknown, f"panel {panel['title']!r} names unknown metrics: {unknown}"
            queries += 1
    assert queries >= 20
    for variable in dashboard["templating"]["list"]:
        metric = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
        assert metric is not None, variable["definition"]
        assert metric[1] in exported


def test_the_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    assert dashboard["uid"]
    assert dashboard["title"]


def test_the_monitoring_profile_in_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        service = services[name]
        assert service["profiles"] == ["monitoring"], name
        assert re.fullmatch(r"[\w/]+:v?\d+\.\d+\.\d+", service["image"]), "pin the image"
        assert all(p.startswith("127.0.0.1:") for p in service["ports"]), name
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}: missing"
            else:
                assert source in compose["volumes"], source
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/bridge.yml").read_text())
    mounted = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounted["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent.as_posix() == provider["providers"][0]["options"]["path"]
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()
    script = services["grafana"]["entrypoint"][2]
    assert 'test -n "$$GF_SECURITY_ADMIN_PASSWORD" || ' in script
    assert "exit 1" in script
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    url = source["datasources"][0]["url"]
    assert url == "http://prometheus:9090"
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]


# -- docs/monitoring.md --------------------------------------------------------------------


def test_the_monitoring_page_names_every_metric_and_alert(
    exported: set[str], rules: list[dict[str, Any]]
) -> None:
    page = (ROOT / "docs" / "monitoring.md").read_text()
    named = set(re.findall(r"`(bridge_\w+)`", page))
    bridge_families = [f for f in REGISTRY.collect() if f.name.startswith("bridge_")]
    fleet = FleetCollector(fakeredis.FakeRedis(), BridgeSettings.load()).describe()
    histograms = {f.name for f in bridge_families if f.type == "histogram"}  # named as such
    assert named - exported - histograms == set(), "the page names metrics no worker exports"
    for family in [*bridge_families, *fleet]:
        shown = {family.name, *(family.name + suffix for suffix in SUFFIXES[family.type])}
        assert shown & named, f"docs/monitoring.md does not describe {family.name}"
    for rule in rules:
        assert f"`{rule['alert']}`" in page, f"docs/monitoring.md does not describe {rule['alert']}"
