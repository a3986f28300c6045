"""Peak RSS and wall time of the smoke run (`experiment=smoke`, embedded model, two rounds), from scratch.

Target (issue: performance): peak RSS <= 4 GiB. Runs `python -m selflengthen experiment=smoke` in a
fresh run folder as a child process and reads the child's peak resident memory from the kernel
(getrusage RUSAGE_CHILDREN, the largest child; engine and trainer live in that one process).

    python bench/peak_rss.py                    # fresh run under iterations/bench-smoke (deleted first)
    python bench/peak_rss.py -- engine.threads=1  # extra Hydra overrides after --
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-name", default="bench-smoke")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    run_dir = REPO / "iterations" / args.run_name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "selflengthen", "experiment=smoke", f"run.name={args.run_name}", *args.overrides]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "SELFLENGTHEN_QUIET": "1"}, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"smoke run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before/after: {os.getloadavg()[0]:.1f}")
    print(f"command: {' '.join(cmd[1:])}")
    print("| figure | measured | target | met? |")
    print("|---|---|---|---|")
    print(f"| peak RSS | {peak / GIB:.2f} GiB | <= 4 GiB | {'yes' if peak <= 4 * GIB else 'NO'} |")
    print(f"| wall time (2 rounds, from scratch, model already converted) | {wall / 60:.1f} min | minutes | - |")
    print(f"run folder: {run_dir} (python bench/overhead.py --run-name {args.run_name} splits its time)")


if __name__ == "__main__":
    main()
