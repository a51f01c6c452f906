"""The beat schedule built from the routes: health checks and purges (no broker needed)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from celery.schedules import crontab

from bridge.settings import BridgeSettings, RouteConfig
from bridge.worker.app import beat_schedule, create_app


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """BRIDGE_ROUTES from the machine would be merged into the routes given."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)


def settings(**routes: dict[str, Any]) -> BridgeSettings:
    return BridgeSettings(
        routes={name: RouteConfig(endpoint_id=name, **fields) for name, fields in routes.items()},
        reap_interval_s=None,
    )


def test_health_check_every_interval_per_route() -> None:
    schedule = beat_schedule(settings(a={}, b={"health_interval_s": 5, "queue": "gpu"}))
    assert schedule == {
        "bridge-health-a": {
            "task": "bridge.health",
            "schedule": timedelta(seconds=30),
            "args": ("a",),
            "options": {"queue": "bridge", "expires": 30.0, "ignore_result": True},
        },
        "bridge-health-b": {
            "task": "bridge.health",
            "schedule": timedelta(seconds=5),
            "args": ("b",),
            "options": {"queue": "gpu", "expires": 5.0, "ignore_result": True},
        },
    }


def test_purge_by_interval() -> None:
    schedule = beat_schedule(settings(a={"health_interval_s": None, "purge_every_s": 3600}))
    assert schedule == {
        "bridge-purge-a": {
            "task": "bridge.purge",
            "schedule": timedelta(hours=1),
            "args": ("a",),
            "options": {"queue": "bridge", "expires": 3600, "ignore_result": True},
        }
    }


def test_purge_by_crontab_reads_minute_hour_day_month_weekday() -> None:
    routes = settings(a={"health_interval_s": 0, "purge_crontab": "15 4 2 3 5", "queue": "q"})
    entry = beat_schedule(routes)["bridge-purge-a"]
    when = entry["schedule"]
    assert isinstance(when, crontab)
    assert (when.minute, when.hour) == ({15}, {4})
    assert (when.day_of_month, when.month_of_year, when.day_of_week) == ({2}, {3}, {5})
    assert (entry["task"], entry["args"], entry["options"]) == (
        "bridge.purge",
        ("a",),
        {"queue": "q", "expires": 60.0, "ignore_result": True},
    )


def test_crontab_wins_over_an_interval() -> None:
    routes = settings(
        a={"health_interval_s": 0, "purge_every_s": 60, "purge_crontab": "*/5 * * * *"}
    )
    when = beat_schedule(routes)["bridge-purge-a"]["schedule"]
    assert isinstance(when, crontab)
    assert when.minute == set(range(0, 60, 5))


def test_nothing_scheduled_when_nothing_is_configured() -> None:
    assert beat_schedule(settings(a={"health_interval_s": None}, b={"health_interval_s": 0})) == {}
    assert beat_schedule(BridgeSettings(routes={})) == {}


def test_reaper_runs_when_there_are_routes() -> None:
    config = BridgeSettings(routes={"a": RouteConfig(endpoint_id="a")}, reap_interval_s=20)
    entry = beat_schedule(config)["bridge-reap"]
    assert (entry["task"], entry["schedule"]) == ("bridge.reap", timedelta(seconds=20))
    assert "bridge-reap" not in beat_schedule(BridgeSettings(routes={}, reap_interval_s=20))


def test_the_app_carries_the_schedule_without_connecting() -> None:
    config = settings(a={"purge_every_s": 60}, b={"health_interval_s": None})
    app = create_app(config)
    assert app.conf.beat_schedule == beat_schedule(config)
    assert sorted(app.conf.beat_schedule) == ["bridge-health-a", "bridge-purge-a"]
    assert app.conf.bridge_settings is config
