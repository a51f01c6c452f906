"""Prometheus metrics of a worker process (served with ``--metrics-port``; off by default).

Labels stay low-cardinality: route, door, operation, HTTP status, final status, reason,
worker/job state. Never a request id, job id, URL or key.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import aiohttp
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from bridge.worker.budget import classify

log = logging.getLogger("bridge.metrics")

_LATENCY = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

REQUESTS = Counter(
    "bridge_requests_received_total", "Requests accepted or refused", ["door", "route"]
)
DEDUP = Counter("bridge_dedup_hits_total", "Requests whose id was already known", ["door"])
SUBMITTED = Counter("bridge_jobs_submitted_total", "Jobs sent to an endpoint", ["route"])
AMBIGUOUS = Counter(
    "bridge_ambiguous_resubmits_total",
    "Submissions sent again after an ambiguous failure (at_least_once)",
    ["route"],
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

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def serve(port: int) -> bool:
    """Serve ``/metrics`` on ``port``; False (logged) when the port is taken, e.g. by a
    sibling prefork process."""
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning("metrics not served on port %d: %s", port, exc)
        return False
    log.info("metrics on http://0.0.0.0:%d/metrics", port)
    return True


def http_trace_config() -> aiohttp.TraceConfig:
    """Counts every queue-API request by operation and status (or exception name)."""

    async def on_end(session: aiohttp.ClientSession, context: SimpleNamespace, params: Any) -> None:
        found = classify(params.url.path)
        if found is None:
            return
        status = params.response.status
        HTTP.labels(found[1], str(status)).inc()
        if status == 429:
            RATE_LIMITED.labels(found[1]).inc()

    async def on_error(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
    ) -> None:
        found = classify(params.url.path)
        if found is not None:
            HTTP.labels(found[1], type(params.exception).__name__).inc()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    trace.on_request_exception.append(on_error)
    return trace


def observe_final(route: str, mode: str, status: str, reason: str | None, job: dict[str, Any],
                  latency_s: float) -> None:  # fmt: skip
    """Everything a final reply tells: outcome, endpoint timings, end-to-end latency."""
    FINISHED.labels(route, status, reason or "").inc()
    LATENCY.labels(route, mode).observe(latency_s)
    if isinstance(job.get("delayTime"), int):
        QUEUE_DELAY.labels(route).observe(job["delayTime"] / 1000)
    if isinstance(job.get("executionTime"), int):
        EXECUTION.labels(route).observe(job["executionTime"] / 1000)
    if reason == "purged":
        PURGED.labels(route).inc()


def observe_health(route: str, health: dict[str, Any]) -> None:
    for state, value in (health.get("workers") or {}).items():
        if isinstance(value, int):
            ENDPOINT_WORKERS.labels(route, state).set(value)
    for state, value in (health.get("jobs") or {}).items():
        if isinstance(value, int):
            ENDPOINT_JOBS.labels(route, state).set(value)
