"""Crash safety through the real CLI: SIGKILL at random moments, multirun resume, disk full mid-stage.

A killed and re-run job must end with exactly the artifacts of an uninterrupted one (same item ids, no
duplicates, no truncated files, same summaries up to timings). The fake engine is deterministic and
slowed down a little so kills land inside stages rather than between them.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE, REPO, fake_settings
from faults import check_logs_clean, kill_repeatedly
from conftest import tree
from selflengthen import recipe
from selflengthen.engines import session
from selflengthen.runfolder.store import StoreError

ENV = {**os.environ, "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}


def cli(root: Path, *extra: str, multirun: bool = False) -> list[str]:
    return [sys.executable, "-m", "selflengthen", *(["-m"] if multirun else []), *FAKE, f"run.root={root}",
            "run.name=job", *extra]


def test_sigkill_at_20_random_moments_changes_nothing(tmp_path):
    delay = "engine.delay=0.05"
    subprocess.run(cli(tmp_path / "ref", delay), cwd=REPO, env=ENV, check=True, capture_output=True)
    reference = tree(tmp_path / "ref" / "job")

    job = tmp_path / "crash" / "job"
    stages_seen = kill_repeatedly(cli(tmp_path / "crash", delay), job, 20, random.Random(7),
                                  lambda j: {p.parent.name for p in j.rglob("done.json")})
    subprocess.run(cli(tmp_path / "crash", delay), cwd=REPO, env=ENV, check=True, capture_output=True)
    assert {"self_instruct", "initial"} <= stages_seen  # the kills were spread over the run
    check_logs_clean(tmp_path / "crash" / "job")
    assert tree(tmp_path / "crash" / "job") == reference


def test_multirun_gives_each_job_a_folder_and_resumes_them(tmp_path):
    cmd = cli(tmp_path, "iterations=1", "sampling.a=1.0,2.0", multirun=True)
    first = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "job").iterdir() if p.is_dir())
    assert jobs == ["sampling.a=1.0", "sampling.a=2.0"]
    before = {j: tree(tmp_path / "job" / j) for j in jobs}
    # the same sweep again resumes every job (nothing to redo) ...
    again = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.count("is complete on disk") == 2
    assert {j: tree(tmp_path / "job" / j) for j in jobs} == before
    # ... and with more iterations continues each one from its own adapters
    more = cli(tmp_path, "iterations=2", "sampling.a=1.0,2.0", multirun=True)
    assert subprocess.run(more, cwd=REPO, env=ENV, capture_output=True).returncode == 0
    for j in jobs:
        s2 = json.loads((tmp_path / "job" / j / "round_002/summary.json").read_text())
        assert s2["adapters_in"]["generator"] == "round_001/train/generator/adapter"  # its own, relative to the job


def test_disk_full_mid_stage_keeps_work_and_the_rerun_continues(tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    recipe.run(fake_settings(ref, "iterations=1"), session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")

    from selflengthen.runfolder import store

    real_append = store.ItemLog.append
    calls = {"n": 0}

    def append_until_full(self, records):
        calls["n"] += 1
        if calls["n"] == 6:
            raise store._disk_error(self.path, OSError(errno.ENOSPC, "No space left on device"))
        return real_append(self, records)

    monkeypatch.setattr(store.ItemLog, "append", append_until_full)
    run = tmp_path / "run"
    with pytest.raises(StoreError) as err:
        recipe.run(fake_settings(run, "iterations=1"), session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")
    assert "disk is full" in str(err.value) and "resumes" in str(err.value)
    check_logs_clean(run)
    saved = sum(len(p.read_text().splitlines()) for p in run.rglob("*.jsonl"))
    assert saved > 0  # the batches written before the failure are still there
    monkeypatch.setattr(store.ItemLog, "append", real_append)
    recipe.run(fake_settings(run, "iterations=1"), session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")
    assert tree(run) == tree(ref)
