"""Sentinel failover, measured: runs tests/integration/bridge/test_sentinel.py N times
(each run: a fresh primary, replica and three sentinels; SIGKILL of the primary under
load through both doors) and prints, per run and in total, the failover time and what
the asynchronous replication lost or what was submitted twice.

    .venv/bin/python bench/sentinel_failover.py --runs 10

Figures: ``failover_s`` (SIGKILL until the sentinels' majority names the replica),
``json_back_s`` / ``celery_back_s`` (SIGKILL until a producer's next request is
acknowledged again), ``lost`` (requests a producer saw acknowledged that the new primary
never knew), ``submitted_twice`` (requests whose job the endpoint ran twice). Results go
to bench/results/sentinel_failover.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/integration/bridge/test_sentinel.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "runs.jsonl"
        failed = 0
        for run in range(1, args.runs + 1):
            env = {**os.environ, "BRIDGE_SENTINEL_REPORT": str(report)}
            done = subprocess.run(
                [sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider",
                 "--basetemp", str(Path(tmp) / f"run{run}")],
                cwd=ROOT, env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            failed += done.returncode != 0
            status = "passed" if done.returncode == 0 else "FAILED"
            print(f"run {run}: {status}", flush=True)
            if done.returncode:
                print(done.stdout[-3000:], flush=True)
        runs = (
            [json.loads(line) for line in report.read_text().splitlines()]
            if report.exists()
            else []
        )
    for n, figures in enumerate(runs, 1):
        print(n, json.dumps(figures))
    if runs:

        def column(name: str) -> list[float]:
            return [float(r[name]) for r in runs]

        print(f"\n{len(runs)} runs ({failed} failed)")
        for name in ("failover_s", "json_back_s", "celery_back_s"):
            values = column(name)
            print(f"{name:>16}: median {statistics.median(values):.2f}  max {max(values):.2f}")
        for name in ("acknowledged", "lost", "lost_but_ran", "submitted_twice"):
            values = column(name)
            print(f"{name:>16}: total {sum(values):.0f}  max per run {max(values):.0f}")
        out = ROOT / "bench" / "results" / "sentinel_failover.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"runs": runs, "failed": failed}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
