"""What the worker shows about itself never holds a password: ``celery inspect conf``
(and Flower's config tab) render the app's configuration, the bridge's settings included."""

from __future__ import annotations

import json
from types import SimpleNamespace

from celery.worker.control import conf

from bridge.settings import BridgeSettings, mask_url
from bridge.worker.app import create_app

SECRET = "s3cret-pa55"


def test_inspect_conf_shows_no_url_password() -> None:
    settings = BridgeSettings(
        redis_url=f"redis://:{SECRET}@redis:6379/0",
        broker_url=f"amqp://bridge:{SECRET}@rabbit:5672//",
        result_backend=f"redis://default:{SECRET}@redis:6379/1",
        routes={},
    )
    app = create_app(settings)
    try:
        shown = conf(SimpleNamespace(app=app), with_defaults=True)
        assert SECRET not in json.dumps(shown, default=str)
        assert "redis://:***@redis:6379/0" in json.dumps(shown, default=str)
    finally:
        app.close()


def test_mask_url_keeps_everything_but_the_password() -> None:
    assert mask_url("redis://u:p@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url("rediss://:p@h") == "rediss://:***@h"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    assert mask_url("sentinel://:p@h1:26379;sentinel://:p@h2:26379") == (
        "sentinel://:***@h1:26379;sentinel://:***@h2:26379"
    )
