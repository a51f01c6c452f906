"""Prometheus metrics of a worker process (served with ``--metrics-port``; off by default).

Labels stay low-cardinality: route, door, operation, HTTP status, final status, reason,
worker/job state. Never a request id, job id, URL or key.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from bridge.runpod import Exchange, Hooks

log = logging.getLogger("bridge.metrics")

_LATENCY = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

REQUESTS = Counter(
    "bridge_requests_received_total", "Requests accepted or refused", ["door", "route"]
)
DEDUP = Counter("bridge_dedup_hits_total", "Requests whose id was already known", ["door"])
SUBMITTED = Counter("bridge_jobs_submitted_total", "Jobs sent to an endpoint", ["route"])
AMBIGUOUS = Counter(
    "bridge_ambiguous_resubmits_total",
    "Submissions sent again although the job may exist (at_least_once), by cause: "
    "lost_response (a /run answer lost) or resumed (a worker stopped mid-submit)",
    ["route", "cause"],
)
FINISHED = Counter(
    "bridge_jobs_finished_total", "Requests ended, by final status", ["route", "status", "reason"]
)
IN_FLIGHT = Gauge("bridge_in_flight", "Requests followed by this process", ["route"])
QUEUE_DELAY = Histogram(
    "bridge_endpoint_queue_delay_seconds", "delayTime reported by the endpoint", ["route"],
    buckets=_LATENCY,
)  # fmt: skip
EXECUTION = Histogram(
    "bridge_endpoint_execution_seconds", "executionTime reported by the endpoint", ["route"],
    buckets=_LATENCY,
)  # fmt: skip
LATENCY = Histogram(
    "bridge_request_latency_seconds", "Accepted to final reply", ["route", "mode"],
    buckets=_LATENCY,
)  # fmt: skip
HTTP = Counter(
    "bridge_endpoint_http_requests_total", "HTTP requests to endpoints", ["operation", "status"]
)
RATE_LIMITED = Counter("bridge_endpoint_429_total", "429 answers from endpoints", ["operation"])
BREAKER = Gauge(
    "bridge_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["endpoint"]
)
ENDPOINT_WORKERS = Gauge(
    "bridge_endpoint_workers", "Endpoint workers by state (health check)", ["route", "state"]
)
ENDPOINT_JOBS = Gauge(
    "bridge_endpoint_jobs", "Endpoint jobs by state (health check)", ["route", "state"]
)
CANCELLATIONS = Counter("bridge_cancellations_total", "Cancels sent to endpoints", ["route"])
PURGED = Counter("bridge_purged_jobs_total", "Our requests ended by a queue purge", ["route"])
DEAD_LETTERS = Counter("bridge_dead_letters_total", "Entries written to the DLQ", ["reason"])
ADOPTED = Counter(
    "bridge_requests_adopted_total",
    "Requests taken over from a worker whose lease expired (it died or stalled)",
)

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: prometheus_client checks and locks on every
    ``labels()`` call (3 µs, ten times per request). Label values are low-cardinality
    (module docstring); a child dropped from this cache is still the metric's own."""
    return metric.labels(*labels)


def serve(port: int, host: str = "127.0.0.1") -> bool:
    """Serve ``/metrics`` on ``host:port``; False (logged) when the port is taken, e.g. by
    a sibling prefork process."""
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics not served on %s:%d: %s", host, port, exc)
        return False
    log.info("metrics on http://%s:%d/metrics", host, port)
    return True


def _count(exchange: Exchange) -> None:
    op = exchange.request.op
    child(HTTP, op, exchange.result).inc()
    if exchange.response is not None and exchange.response.status_code == 429:
        RATE_LIMITED.labels(op).inc()


HOOKS = Hooks(after=(_count,))
"""Client hooks that count every endpoint request by operation and result."""


def observe_final(route: str, mode: str, status: str, reason: str | None, job: dict[str, Any],
                  latency_s: float) -> None:  # fmt: skip
    """Everything a final reply tells: outcome, endpoint timings, end-to-end latency."""
    child(FINISHED, route, status, reason or "").inc()
    child(LATENCY, route, mode).observe(latency_s)
    if isinstance(job.get("delayTime"), int):
        child(QUEUE_DELAY, route).observe(job["delayTime"] / 1000)
    if isinstance(job.get("executionTime"), int):
        child(EXECUTION, route).observe(job["executionTime"] / 1000)
    if reason == "purged":
        PURGED.labels(route).inc()


def observe_health(route: str, health: dict[str, Any]) -> None:
    for state, value in (health.get("workers") or {}).items():
        if isinstance(value, int):
            ENDPOINT_WORKERS.labels(route, state).set(value)
    for state, value in (health.get("jobs") or {}).items():
        if isinstance(value, int):
            ENDPOINT_JOBS.labels(route, state).set(value)
