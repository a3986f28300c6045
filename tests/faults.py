"""Helpers of the kill tests (e2e/test_faults.py, e2e/test_toy_method.py, e2e/test_agentwrite_faults.py,
dist/test_ranks_fake.py ...): SIGKILL a run at random moments and check what it left."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from conftest import REPO

ENV = {**os.environ, "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}


def check_logs_clean(run_dir: Path) -> None:
    """Every JSONL artifact parses to the last byte and no item id appears twice."""
    for path in run_dir.rglob("*.jsonl"):
        raw = path.read_text()
        assert raw == "" or raw.endswith("\n"), f"{path} is truncated"
        ids = [json.loads(line)["id"] for line in raw.splitlines()]
        assert len(ids) == len(set(ids)), f"{path} has duplicate ids"


def progress(job: Path) -> int:
    """Bytes saved so far: grows with every durable batch and finished artifact."""
    return sum(p.stat().st_size for p in job.glob("round_*/**/*") if p.is_file())


def kill_repeatedly(cmd: list[str], job: Path, kills: int, rng: random.Random, seen) -> set:
    """Start `cmd` and SIGKILL it at a random moment once it has saved something, `kills` times; after each
    kill the logs must be clean. Returns the union of `seen(job)` after every kill (where the kills landed)."""
    landed: set = set()
    for n in range(kills):
        before = progress(job)
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # kill at a random moment once this process has saved something (start-up time varies with load)
        deadline = time.time() + 60
        while progress(job) == before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, f"the run finished after {n} kills: raise engine.delay to spread {kills} kills"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check_logs_clean(job)
        landed |= seen(job)
    return landed
