"""``python -m bench`` (``make bench``): run every benchmark in this folder, one after
the other, each printing its figures next to its same-run baseline; the JSON results
land in bench/results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["emulator_throughput.py", "client_latency.py", "bridge_e2e.py"]


def main() -> int:
    here = Path(__file__).parent
    failed = []
    for name in BENCHES:
        script = here / name
        if not script.exists():
            continue
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
