"""A method added as one module (tests/e2e/toy_method.py) runs end to end through the real CLI, resumes
after kills, and its stage sections show in the round table, summary.json and report.json."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO
from faults import check_logs_clean, progress
from conftest import tree

ENV = {**os.environ, "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}
TOY = ["experiment=fake", "method.name=tests.e2e.toy_method", "+draft.per_round=3", "run.checkpoint_every=1",
       "report.plots=true"]


def cli(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "selflengthen", *TOY, f"run.root={root}", "run.name=toy", *extra]


def test_toy_method_runs_resumes_and_reports(tmp_path):
    done = subprocess.run(cli(tmp_path / "ref", "engine.delay=0.03"), cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "ref" / "toy"
    for r in (1, 2):
        summary = json.loads((run / f"round_{r:03d}/summary.json").read_text())
        assert summary["method"] == "tests.e2e.toy_method"
        assert list(summary["stages"]) == ["draft", "train"]
        assert summary["stages"]["draft"]["drafts"] == 3
        assert (run / f"round_{r:03d}/draft/writer.jsonl").exists()
        assert (run / f"round_{r:03d}/train/writer/adapter/adapter_config.json").exists()
    two = json.loads((run / "round_002/summary.json").read_text())
    assert two["adapters_in"] == {"writer": "round_001/train/writer/adapter"}  # round 2 drafts with round 1's writer
    assert "3 drafts" in done.stderr  # the round table shows the stage's own line
    report = json.loads((run / "report/report.json").read_text())
    assert report["method"] == "tests.e2e.toy_method"
    assert list(report["rounds"][0]["stages"]) == ["draft", "train"]
    assert report["rounds"][0]["stages"]["draft"].startswith("3 drafts")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"] == ["draft", "train"] and manifest["method"] == "tests.e2e.toy_method"

    # killed at random moments and rerun: the same artifacts as the uninterrupted run
    rng = random.Random(3)
    job = tmp_path / "crash" / "toy"
    for _ in range(5):
        before = progress(job)
        proc = subprocess.Popen(cli(tmp_path / "crash", "engine.delay=0.03"), cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while progress(job) == before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.2))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check_logs_clean(job)
    again = subprocess.run(cli(tmp_path / "crash", "engine.delay=0.03"), cwd=REPO, env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert tree(job) == tree(run)
