"""method=agentwrite through the real CLI on the fake engine and trainer: plans parsed, steps written,
answers kept, the writer trained; the round table and report.json show the plan and write statistics and
their rejection reasons; and SIGKILL at random moments (landing inside plan and inside write) changes
nothing: the rerun ends with exactly the artifacts of an uninterrupted run, no id twice in any log."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from faults import check_logs_clean, kill_repeatedly
from conftest import tree

ENV = {**os.environ, "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}
# two plans per instruction and one record per fsync: kills have many records to land between
AGENTWRITE = ["method=agentwrite", "experiment=fake", "plan.samples=2", "run.checkpoint_every=1"]


def cli(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "selflengthen", *AGENTWRITE, f"run.root={root}", "run.name=job", *extra]


def unfinished_stages(job: Path) -> set[str]:
    """Stages that have begun (their folder exists) but not finished (no done.json): where a kill landed."""
    return {p.name for p in job.glob("round_*/*") if p.is_dir() and not (p / "done.json").exists()}


def test_agentwrite_runs_end_to_end_and_reports(tmp_path):
    done = subprocess.run(cli(tmp_path, "report.plots=true"), cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    job = tmp_path / "job"
    for r in (1, 2):
        summary = json.loads((job / f"round_{r:03d}/summary.json").read_text())
        assert list(summary["stages"]) == ["self_instruct", "plan", "write", "sft_data", "train"]
        p, w = summary["stages"]["plan"], summary["stages"]["write"]
        assert p["planned"] > 0 and p["plans_drawn"] >= p["planned"] and p["mean_steps"] >= 2
        assert w["written"] > 0 and w["kept"] > 0 and w["step_generations"] >= w["written"] * 2
        answers = [json.loads(x) for x in (job / f"round_{r:03d}/write/answers.jsonl").read_text().splitlines()]
        assert len(answers) == w["kept"] and all(a["words"] > 200 and a["steps"] >= 2 for a in answers)
        assert (job / f"round_{r:03d}/train/writer/adapter/adapter_config.json").exists()
    rejections = {}
    for r in (1, 2):
        for k, v in json.loads((job / f"round_{r:03d}/summary.json").read_text())["rejections"].items():
            rejections[k] = rejections.get(k, 0) + v
    assert any(k.startswith("plan_") for k in rejections) and any(k.startswith("step_") for k in rejections)
    two = json.loads((job / "round_002/summary.json").read_text())
    assert two["adapters_in"] == {"writer": "round_001/train/writer/adapter"}

    # the printed round table: each stage's brief, and the rejections by reason
    table = done.stderr + done.stdout
    assert "plans of" in table and "drawn)" in table and "step calls" in table and "passed)" in table
    assert "Rejections by reason" in table and "plan" in table.split("Rejections by reason", 1)[1]
    report = json.loads((job / "report/report.json").read_text())
    assert report["method"] == "agentwrite"
    first = report["rounds"][0]
    assert first["stages"]["plan"].startswith(f"{first['sections']['plan']['planned']} plans of")
    assert "step calls" in first["stages"]["write"]
    assert first["sections"]["plan"]["rejections"] == {k: v for k, v in first["rejections"].items()
                                                         if k.startswith("plan_")}
    assert sum(r["rejections"].get(k, 0) for r in report["rounds"] for k in rejections) == sum(rejections.values())


def test_sigkill_at_20_random_moments_changes_nothing(tmp_path):
    delay = "engine.delay=0.05"
    ref = subprocess.run(cli(tmp_path / "ref", delay), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = tree(tmp_path / "ref" / "job")

    job = tmp_path / "crash" / "job"
    landed = kill_repeatedly(cli(tmp_path / "crash", delay), job, 20, random.Random(11), unfinished_stages)
    assert {"plan", "write"} <= landed, landed  # kills landed inside plan and inside write
    again = subprocess.run(cli(tmp_path / "crash", delay), cwd=REPO, env=ENV, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    check_logs_clean(job)
    assert tree(job) == reference
