"""Hydra's submitit launcher runs a sweep of whole runs: `submitit_local` (the same code path as
`hydra/launcher=slurm`, with local processes instead of Slurm jobs) runs two jobs of experiment=fake."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.dist


def test_submitit_local_runs_a_two_job_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cmd = [sys.executable, "-m", "selflengthen", "-m", "hydra/launcher=submitit_local", "experiment=fake",
           "iterations=1", f"run.root={tmp_path}", "run.name=sweep", "seed=1,2"]
    env = {**os.environ, "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for seed in (1, 2):
        summary = json.loads((tmp_path / "sweep" / f"seed={seed}" / "round_001" / "summary.json").read_text())
        assert summary["round"] == 1
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # submitit's own job folders
