"""The report every benchmark ends with: one row per target with the figure, the baseline
measured in the same run, their ratio, and pass or FAIL. It is printed as a table and
written, with every figure behind it, to ``bench/results/NAME.json``; the script exits 1
when a target is missed (2 when the benchmark itself failed), so ``make bench`` fails.

Rows whose target is about a scale the run did not reach (``--quick``) are marked
``n/a (quick)`` and do not fail the run: a quick run is a smoke test, not a measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PASS, FAIL, ERROR, QUICK, INFO = "pass", "FAIL", "ERROR", "n/a (quick)", "info"


@dataclass
class Row:
    """One target: what it asks, what was measured, against what, and the verdict."""

    bench: str
    target: str
    measured: str
    baseline: str
    ratio: str
    verdict: str


class Report:
    """Rows and figures of one benchmark run.

    Args:
        bench: the benchmark's name (its file's stem).
        args: its parsed command line (``quick`` among them).
    """

    def __init__(self, bench: str, args: argparse.Namespace) -> None:
        self.bench = bench
        self.args = args
        self.quick = bool(getattr(args, "quick", False))
        self.rows: list[Row] = []
        self.figures: dict[str, Any] = {}
        self.started = time.monotonic()

    def target(
        self,
        target: str,
        measured: str,
        ok: bool,
        *,
        baseline: str = "—",
        ratio: str = "—",
        scaled_down: bool = False,
    ) -> None:
        """Add a target's row; ``scaled_down``: the run did not reach the target's scale."""
        verdict = QUICK if scaled_down else PASS if ok else FAIL
        self.rows.append(Row(self.bench, target, measured, baseline, ratio, verdict))

    def info(self, what: str, measured: str, *, baseline: str = "—", ratio: str = "—") -> None:
        """A figure shown next to the targets, without a target of its own."""
        self.rows.append(Row(self.bench, what, measured, baseline, ratio, INFO))

    def error(self, what: str) -> None:
        self.rows.append(Row(self.bench, "the benchmark runs to its end", what, "—", "—", ERROR))

    def finish(self) -> int:
        """Write the results file, print the table; the exit status."""
        RESULTS.mkdir(exist_ok=True)
        result = {
            "bench": self.bench,
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": commit(),
            "quick": self.quick,
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
            "rows": [asdict(r) for r in self.rows],
            "figures": self.figures,
        }
        (RESULTS / f"{self.bench}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(self.figures, indent=2))
        print()
        print(table(self.rows))
        return status(self.rows)


def status(rows: list[Row]) -> int:
    if any(r.verdict == ERROR for r in rows):
        return 2
    return 1 if any(r.verdict == FAIL for r in rows) else 0


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table (it goes into bench/README.md as is)."""
    head = ["bench", "target", "measured", "baseline (same run)", "ratio", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        verdict = f"**{r.verdict}**" if r.verdict in (FAIL, ERROR) else r.verdict
        cells = [r.bench, r.target, r.measured, r.baseline, r.ratio, verdict]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def run(bench: str, parser: argparse.ArgumentParser, body: Callable[[Report], None]) -> None:
    """Parse the command line, run ``body``, and exit with the report's status; an
    exception becomes an ERROR row (and exit 2), with the traceback on stderr."""
    parser.add_argument("--quick", action="store_true", help="a short smoke-test run")
    report = Report(bench, parser.parse_args())
    try:
        body(report)
    except Exception as exc:  # the report must still be written, and say what broke
        traceback.print_exc()
        report.error(f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
    sys.exit(report.finish())


def commit() -> str:
    """The code measured: HEAD's short hash, ``+uncommitted`` when the product's files
    differ from it; or, when ``bridge`` is imported from elsewhere (``PYTHONPATH``), that
    place and the commit named in its ``COMMIT`` file."""
    spec = importlib.util.find_spec("bridge")
    origin = Path(spec.origin).resolve().parent.parent if spec and spec.origin else None
    if origin is not None and origin != HERE.parent:
        named = origin / "COMMIT"
        return f"{named.read_text().strip() if named.exists() else '?'} (from {origin})"

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=HERE, capture_output=True, text=True)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return head + ("+uncommitted" if git("status", "--porcelain", "--", "../bridge") else "")


# -- formatting -------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:.2f} ms" if abs(value) < 10 else f"{value:.1f} ms"


def times(value: float) -> str:
    return f"{value:.2f}x"


def per_s(value: float) -> str:
    return f"{value:,.0f}/s"
