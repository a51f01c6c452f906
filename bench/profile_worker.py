"""Where a bridge worker's CPU goes: py-spy samples one worker while it serves bursts of
0 ms jobs through one door, then the hottest frames are printed (own time and total).

Only samples holding the GIL are kept (``--gil``): CPU spent in Python, not waits.

Not a benchmark with targets: a tool for finding what to make cheaper. It starts what
``bridge_e2e`` starts (a private Redis, the emulator without rate limits, one ``bridge
worker --concurrency 4``), attaches ``py-spy record`` to the worker (py-spy is a PyPI
package, the ``bench`` extra), sends ``--bursts`` bursts of ``--n``
requests, and reads py-spy's raw (collapsed) output.

Run: ``.venv/bin/python bench/profile_worker.py --door celery --n 1000``
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _bridge import echo_worker, send_burst
from _common import cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--door", choices=["json", "celery"], default="json")
    parser.add_argument("--n", type=int, default=1000, help="requests per burst")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--top", type=int, default=30, help="frames to print")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--save", type=Path, help="keep py-spy's raw output here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with echo_worker("bench-prof") as (bridge, worker, tmp):
        send_burst(bridge, args.door, max(50, args.n // 4))  # warm up
        out = tmp / "profile.txt"
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(worker.pid), "--format", "raw", "--rate",
             str(args.rate), "--nonblocking", "--threads", "--gil", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(1.0)  # py-spy attaches
        cpu0, start = cpu_seconds(worker.pid), time.perf_counter()
        for _ in range(args.bursts):
            send_burst(bridge, args.door, args.n)
        elapsed = time.perf_counter() - start
        cpu_ms = (cpu_seconds(worker.pid) - cpu0) * 1000 / (args.n * args.bursts)
        spy.send_signal(2)  # SIGINT: py-spy writes its output and stops
        spy.wait(30)
        if args.save and out.exists():
            shutil.copy(out, args.save)
        total = args.n * args.bursts
        print(f"{args.door} door: {total} requests in {elapsed:.1f} s "
              f"({total / elapsed:.0f}/s), worker CPU {cpu_ms:.2f} ms per request")  # fmt: skip
        report(out.read_text() if out.exists() else "", args.top)


def report(raw: str, top: int) -> None:
    """Own and total samples per frame, and per thread, from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_function(f) for f in stack.split(";")]
        samples += n
        threads[stack.split(";")[0]] += n
        own[frames[-1]] += n
        packages[_package(stack.split(";")[-1])] += n
        for frame in set(frames[1:]):
            total[frame] += n
    if not samples:
        print("py-spy recorded nothing (can it attach? try as root or with ptrace allowed)")
        return
    print(f"\n{samples} samples; by thread:")
    for name, n in threads.most_common(8):
        print(f"  {100 * n / samples:5.1f}%  {name}")
    print("\nown time by package:")
    for name, n in packages.most_common(12):
        print(f"  {100 * n / samples:5.1f}%  {name}")
    for title, counter in (("own time", own), ("total time (frame and below)", total)):
        print(f"\ntop frames, {title}:")
        for frame, n in counter.most_common(top):
            print(f"  {100 * n / samples:5.1f}%  {frame[:150]}")


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` without its line: one row per function."""
    head, _, where = frame.rpartition(" (")
    return f"{head} ({where.rsplit(':', 1)[0]})" if head else frame


def _package(frame: str) -> str:
    """The top package of a frame's file (``aiohttp``, ``redis``, ``bridge``, ``asyncio``)."""
    where = frame.rpartition(" (")[2]
    path = where.rsplit(":", 1)[0]
    if path.startswith("<"):
        return path
    return path.split("/")[0].removesuffix(".py")


if __name__ == "__main__":
    main()
