"""``bridge top``: the fleet at a glance, drawn from a :class:`~bridge.fleet.Snapshot`.

:func:`render` turns a snapshot into one frame (tested with rich's recording console);
:func:`run` redraws it every ``interval`` seconds in a :class:`rich.live.Live` until
Ctrl-C. Endpoint data (health, errors) is shown as text, never read as console markup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bridge.fleet import Fleet, RouteView, Snapshot, WorkerView

BREAKER_STYLES = {"closed": "green", "open": "bold red", "half_open": "yellow"}
WORKER_STYLES = {"alive": "green", "lease lost": "bold red", "stopped": "dim"}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def _health(route: RouteView, now: float) -> Text:
    snap = route.health
    if snap is None:
        return Text("-", "dim")
    health = snap.get("health") or {}
    jobs, workers = health.get("jobs") or {}, health.get("workers") or {}
    parts = [_age(now - float(snap.get("at") or now))]
    if snap.get("ok"):
        parts.append(f"q{jobs.get('inQueue', '-')} r{jobs.get('inProgress', '-')}")
        parts.append(f"w{workers.get('idle', '-')}/{workers.get('running', '-')}")
    warnings = "; ".join(str(w) for w in snap.get("warnings") or [])
    if not snap.get("ok") and not warnings:
        warnings = "error"
    style = "yellow" if warnings else ""
    return Text(" ".join([*parts, warnings] if warnings else parts), style)


ROUTE_COLUMNS = ("route", "endpoint", "wait", "run", "done/m", "fail/m", "p50", "p99",
                 "breaker", "health")  # fmt: skip
NUMERIC = frozenset(ROUTE_COLUMNS[2:8])
CAPTION = ("wait: not yet at the endpoint (+ handed over); run: at the endpoint; /m and "
           "p50/p99: last minute; health: age q(ueued) r(unning) w(orkers idle/running); "
           "!: no live worker serves it; ?: not in this config")  # fmt: skip


def routes_table(snapshot: Snapshot) -> Table:
    table = Table(title="routes", title_justify="left", caption=CAPTION, caption_justify="left",
                  box=box.SIMPLE_HEAD)  # fmt: skip
    for column in ROUTE_COLUMNS:
        table.add_column(column, justify="right" if column in NUMERIC else "left",
                         no_wrap=column != "health")  # fmt: skip
    for route in snapshot.routes:
        waiting = str(route.waiting) + (f" +{route.handed_over}" if route.handed_over else "")
        name = Text(route.name)
        if not route.configured:
            name.append("?", "dim")
        if not route.served:
            name.append("!", "yellow")
        table.add_row(
            name,
            Text(route.endpoint_id or "?"),
            waiting,
            str(route.at_endpoint),
            _rate(route.done_per_min),
            Text(_rate(route.failed_per_min), "red" if route.window.failed else ""),
            _latency(route.window.percentile(0.5)),
            _latency(route.window.percentile(0.99)),
            Text(route.breaker, BREAKER_STYLES.get(route.breaker, "")),
            _health(route, snapshot.at),
        )
    return table


def workers_table(workers: list[WorkerView]) -> Table:
    table = Table(title="workers", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("worker")
    table.add_column("state")
    table.add_column("lease renewed", justify="right")
    table.add_column("lease left", justify="right")
    table.add_column("in flight", justify="right")
    for worker in workers:
        table.add_row(
            Text(worker.name),
            Text(worker.state, WORKER_STYLES.get(worker.state, "")),
            _age(worker.renewed_age_s) + (" ago" if worker.renewed_age_s is not None else ""),
            _age(worker.lease_left_s),
            str(worker.in_flight),
        )
    if not workers:
        table.add_row(Text("no worker has held a lease", "dim"), "", "", "", "")
    return table


def header(snapshot: Snapshot) -> Text:
    door = snapshot.door
    when = time.strftime("%H:%M:%S", time.localtime(snapshot.at))
    line = Text.assemble(("bridge top", "bold"), f"  {when}  ")
    pending = "no consumer group" if door.pending is None else f"{door.pending} being handled"
    line.append(f"JSON door {door.stream}: {door.length} in stream ({pending}, "
                f"{door.consumers} consumer(s))")  # fmt: skip
    if snapshot.celery_queues:
        queued = ", ".join(f"{q} {n}" for q, n in snapshot.celery_queues.items())
        line.append(f"  Celery queues: {queued}")
    line.append("  DLQ: ")
    line.append(str(snapshot.dlq_length), "bold red" if snapshot.dlq_length else "")
    if snapshot.unowned:
        line.append(f"  {snapshot.unowned} request(s) of no listed worker", "yellow")
    return line


def render(snapshot: Snapshot) -> RenderableType:
    """One frame: the header line, the routes, the workers."""
    return Group(header(snapshot), routes_table(snapshot), workers_table(snapshot.workers))


def problem_frame(error: str, last: Snapshot | None, now: float) -> RenderableType:
    """A frame while Redis does not answer: the error above the last good frame."""
    when = time.strftime("%H:%M:%S", time.localtime(now))
    warning = Text(f"{when}  cannot read the fleet: {error} (retrying)", "bold red")
    return Group(warning, render(last)) if last is not None else warning


def frames(
    fleet: Fleet, *, interval: float = 1.0, sleep: Callable[[float], Any] = time.sleep
) -> Iterator[RenderableType]:
    """Frames every ``interval`` seconds, for ever. The first snapshot's failure is
    raised (a wrong URL should say so at once); later ones are shown and retried."""
    last = fleet.snapshot()
    yield render(last)
    while True:
        sleep(interval)
        try:
            last = fleet.snapshot()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            yield problem_frame(str(exc), last, time.time())
            continue
        yield render(last)


def run(
    fleet: Fleet,
    console: Console,
    *,
    interval: float = 1.0,
    sleep: Callable[[float], Any] = time.sleep,
) -> None:
    """Redraw :func:`frames` in place until Ctrl-C, which ends it quietly. On a console
    that is not a terminal (``bridge top > file``) every frame is printed after the one
    before, as ``top -b`` does."""
    shown = frames(fleet, interval=interval, sleep=sleep)
    try:
        if not console.is_terminal:
            for frame in shown:
                console.print(frame)
            return  # pragma: no cover (frames never ends)
        with Live(next(shown), console=console, auto_refresh=False) as live:
            for frame in shown:
                live.update(frame, refresh=True)
    except KeyboardInterrupt:
        return
