"""``python -m bench`` (``make bench``): run the benchmarks, each in a process of its own
with a time limit, then print one table of every target with its figure, the baseline
measured in the same run, their ratio and pass or FAIL. Exits 1 when a target is missed,
2 when a benchmark could not run to its end (crashed or timed out).

Each benchmark also writes its figures to ``bench/results/NAME.json`` and the logs of
the processes it started to ``bench/results/logs/NAME/``; the combined table goes to
``bench/results/summary.md``.

Examples::

    python -m bench                          # everything (about 15 min)
    python -m bench --quick                  # a smoke test of everything (about 3 min)
    python -m bench --only client_latency    # a subset (comma-separated or repeated)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench._report import ERROR, RESULTS, Row, status, table

HERE = Path(__file__).resolve().parent
BENCHES: dict[str, tuple[int, int]] = {  # name: time limit in seconds (full run, --quick)
    "emulator_throughput": (180, 90),
    "client_latency": (400, 150),
    "bridge_e2e": (900, 300),
    "scale_out": (600, 200),
    "adoption": (400, 240),
    "inflight": (1500, 240),
}


KEEPS_LOGS = {"bridge_e2e", "scale_out", "adoption", "inflight"}


def run_one(name: str, quick: bool) -> tuple[list[Row], float]:
    """Run bench ``name`` to its end or its time limit; its rows and seconds taken."""
    result = RESULTS / f"{name}.json"
    result.unlink(missing_ok=True)  # never report a previous run's figures
    limit = BENCHES[name][1 if quick else 0]
    command = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if quick else [])]
    if name in KEEPS_LOGS:  # kept for a post-mortem (the worker's log names every request)
        logs = RESULTS / "logs" / name
        shutil.rmtree(logs, ignore_errors=True)
        command += ["--logs", str(logs)]
    print(f"== {name} (limit {limit} s)", flush=True)
    start = time.monotonic()
    # A session of its own, so that the whole tree it starts can be stopped at its limit.
    proc = subprocess.Popen(command, start_new_session=True)
    try:
        code = proc.wait(timeout=limit)
        failure = f"exited with {code} and wrote no results"
    except subprocess.TimeoutExpired:
        stop_group(proc)
        failure = f"stopped at its time limit of {limit} s"
    elapsed = time.monotonic() - start
    if not result.exists():
        return [Row(name, "the benchmark runs to its end", failure, "—", "—", ERROR)], elapsed
    rows = [Row(**r) for r in json.loads(result.read_text())["rows"]]
    return rows, elapsed


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the benchmark's process group (the benchmark and what it started), then
    SIGKILL what is left after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(1)  # its children get a moment after it
        except subprocess.TimeoutExpired:
            continue


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", default=[], help="benchmarks to run")
    parser.add_argument("--quick", action="store_true", help="a short smoke-test run of each")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and stop")
    args = parser.parse_args()
    if args.list:
        print("\n".join(BENCHES))
        return 0
    names = [n for spec in args.only for n in spec.split(",") if n] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    rows: list[Row] = []
    took: dict[str, float] = {}
    start = time.monotonic()
    for name in names:
        mine, took[name] = run_one(name, args.quick)
        rows += mine
    total = time.monotonic() - start
    summary = table(rows)
    times = ", ".join(f"{n} {s:.0f} s" for n, s in took.items())
    footer = f"{'quick run; ' if args.quick else ''}took {total / 60:.1f} min ({times})"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "summary.md").write_text(f"{summary}\n\n{footer}\n")
    print(f"\n{summary}\n\n{footer}")
    missed = [f"{r.bench}: {r.target}" for r in rows if r.verdict in ("FAIL", ERROR)]
    if missed:
        print("\nmissed or not measured:\n  " + "\n  ".join(missed), file=sys.stderr)
    return status(rows)


if __name__ == "__main__":
    raise SystemExit(main())
