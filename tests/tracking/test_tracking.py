"""tracking=tensorboard|wandb|mlflow, for real and offline: the loop's numbers per round (round = step) are
read back from what each tracker wrote (TensorBoard event files, W&B's offline run file, an MLflow file
store), a resumed run continues the same tracked run and logs only its new rounds, the trainers' own metrics
arrive through their report_to, and a tracker that is missing or misconfigured stops the command first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE, REPO, fake_engine, fake_settings

from selflengthen import recipe
from selflengthen.support import tracking

TRACKED = [*FAKE, "eval.every_round=true", "eval.limit=2", "final.enabled=true"]


def run(run_dir: Path, *overrides: str):
    s = fake_settings(run_dir, *TRACKED, *overrides)
    recipe.run(s, fake_engine(), lambda: "fake-model")
    return s


def summaries(run_dir: Path) -> dict[int, dict]:
    return {int(p.parent.name.split("_")[1]): json.loads(p.read_text()) for p in run_dir.glob("round_*/summary.json")}


def tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_numbers_flatten_every_section_of_a_summary():
    summary = {"round": 2, "method": "selflengthen", "adapters_in": {"generator": "x"},
               "stages": {"initial": {"kept": 6, "mean_words": 100.0, "rejections": {"repeated_10gram": 2}},
                          "extend": {"kept": 3, "mean_words": 250.0, "ok": True},
                          "train": {"generator": {"loss": 0.5, "adapter_sha256": "ab"}}},
               "rejections": {"repeated_10gram": 2}, "seconds": {"initial": 1.5, "round": 9.0},
               "eval": {"length_score": 0.75, "constrained": {"s_l": 60.0}}}
    m = tracking.round_metrics(summary)
    assert m == {"initial/kept": 6.0, "initial/mean_words": 100.0, "initial/rejections/repeated_10gram": 2.0,
                 "extend/kept": 3.0, "extend/mean_words": 250.0, "train/generator/loss": 0.5,
                 "rejections/repeated_10gram": 2.0, "seconds/initial": 1.5, "seconds/round": 9.0,
                 "eval/length_score": 0.75, "eval/constrained/s_l": 60.0, "growth": 2.5}


def test_tensorboard_gets_each_round_once_and_a_resume_adds_only_the_new_rounds(tmp_path):
    s = run(tmp_path / "run", "tracking=tensorboard")
    loop = tmp_path / "run" / "tracking" / "tensorboard" / "loop"
    got, sums = tb_scalars(loop), summaries(s.run_dir)
    for key, path in (("extend/kept", ("stages", "extend", "kept")), ("initial/kept", ("stages", "initial", "kept")),
                      ("train/generator/loss", ("stages", "train", "generator", "loss")),
                      ("self_instruct/instructions", ("stages", "self_instruct", "instructions"))):
        want = []
        for r in (1, 2):
            node = sums[r]
            for p in path:
                node = node[p]
            want.append((r, pytest.approx(node)))
        assert got[key] == want, key
    growth = [(r, pytest.approx(sums[r]["stages"]["extend"]["mean_words"] / sums[r]["stages"]["initial"]["mean_words"]))
              for r in (1, 2)]
    assert got["growth"] == growth
    assert [step for step, _ in got["eval/length_score"]] == [0, 1, 2]  # round 0 = the base model
    assert got["seconds/extend"][0][0] == 1 and any(k.startswith("rejections/") for k in got)
    assert [step for step, _ in got["final/train/generator/loss"]] == [3]  # the final stages at iterations + 1
    assert [step for step, _ in got["final/eval/length_score"]] == [3]
    state = json.loads((s.run_dir / "tracking.json").read_text())["tensorboard"]
    assert state["logged"] == ["0", "1", "2", "final@2"]

    run(tmp_path / "run", "tracking=tensorboard")  # the same command again: nothing new to log
    assert tb_scalars(loop) == got
    run(tmp_path / "run", "tracking=tensorboard", "iterations=3")  # one more round
    again = tb_scalars(loop)
    assert [step for step, _ in again["extend/kept"]] == [1, 2, 3]  # rounds 1-2 not logged twice
    assert [step for step, _ in again["eval/length_score"]] == [0, 1, 2, 3]
    assert [step for step, _ in again["final/train/generator/loss"]] == [3, 4]  # the final model, rebuilt


def test_wandb_offline_one_run_continued_on_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import wandb_reader

    monkeypatch.setenv("WANDB_SILENT", "true")
    s = run(tmp_path / "run", "tracking=wandb", "tracking.mode=offline")
    run_id = json.loads((s.run_dir / "tracking.json").read_text())["wandb"]["id"]
    files = wandb_reader.offline_runs(s.run_dir / "tracking")
    assert len(files) == 1 and files[0].name == f"run-{run_id}.wandb"
    rows = [r for r in wandb_reader.history(files[0]) if "extend/kept" in r]
    sums = summaries(s.run_dir)
    assert [(r["round"], r["extend/kept"], r["train/generator/loss"]) for r in rows] == [
        (n, sums[n]["stages"]["extend"]["kept"], pytest.approx(sums[n]["stages"]["train"]["generator"]["loss"]))
        for n in (1, 2)]
    assert any(r.get("round") == 0 and "eval/length_score" in r for r in wandb_reader.history(files[0]))
    assert "WANDB_MODE" not in os.environ and tracking.report_to() == "none"  # the run's environment is restored

    run(tmp_path / "run", "tracking=wandb", "tracking.mode=offline", "iterations=3")
    files = wandb_reader.offline_runs(s.run_dir / "tracking")
    assert len(files) == 2 and {f.name for f in files} == {f"run-{run_id}.wandb"}  # the same W&B run, continued
    new = [r["round"] for f in files[1:] for r in wandb_reader.history(f) if "extend/kept" in r]
    assert new == [3]


def test_mlflow_file_store_one_run_continued_on_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this test's own client
    from mlflow.tracking import MlflowClient

    s = run(tmp_path / "run", "tracking=mlflow")
    uri = (s.run_dir / "tracking" / "mlruns").resolve().as_uri()
    run_id = json.loads((s.run_dir / "tracking.json").read_text())["mlflow"]["id"]
    client = MlflowClient(tracking_uri=uri)
    sums = summaries(s.run_dir)
    hist = client.get_metric_history(run_id, "extend/kept")
    assert sorted((m.step, m.value) for m in hist) == [(n, sums[n]["stages"]["extend"]["kept"]) for n in (1, 2)]
    assert [m.step for m in client.get_metric_history(run_id, "eval/length_score")] == [0, 1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"

    run(tmp_path / "run", "tracking=mlflow", "iterations=3")
    assert json.loads((s.run_dir / "tracking.json").read_text())["mlflow"]["id"] == run_id
    assert sorted(m.step for m in client.get_metric_history(run_id, "extend/kept")) == [1, 2, 3]
    assert len(client.search_runs([client.get_experiment_by_name("selflengthen").experiment_id])) == 1


def test_the_sft_trainer_reports_its_loss_through_report_to(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from selflengthen.training.sft_lora import TrainConfig, train_lora

    rows = [{"messages": [{"role": "user", "content": f"Write about topic {i}."},
                          {"role": "assistant", "content": "The committee met on Tuesday. " * (i + 2)}]} for i in range(4)]
    s = fake_settings(tmp_path / "run", *FAKE, "tracking=tensorboard")
    tracker = tracking.open_tracker(s)
    try:
        with tracking.training("round_001", "generator"):
            train_lora(str(tiny_model_dir), rows, tmp_path / "out", None,
                       TrainConfig(max_steps=3, grad_accum=1, lr=1e-3, save_steps=1000, warmup_ratio=0.0))
    finally:
        tracker.close()
    got = tb_scalars(s.run_dir / "tracking" / "tensorboard" / "train_generator" / "round_001")
    assert [step for step, _ in got["train/loss"]] == [1, 2, 3]
    assert all(v > 0 for _, v in got["train/loss"])
    assert tracking.report_to() == "none"


def _cli(tmp_path: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selflengthen", *FAKE, f"run.root={tmp_path / 'runs'}", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **env})


def test_a_misconfigured_tracker_stops_before_any_work_in_one_paragraph(tmp_path):
    pytest.importorskip("wandb")
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": ""}  # no key, no ~/.netrc
    out = _cli(tmp_path, "tracking=wandb", env=env)
    assert out.returncode == 2 and "wandb login" in out.stderr and "tracking.mode=offline" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()
    out = _cli(tmp_path, "tracking=mlflow", "tracking.uri=nosuchscheme://x", env={})
    assert out.returncode == 2 and "tracking.uri" in out.stderr and not (tmp_path / "runs").exists()
    out = _cli(tmp_path, "tracking=comet", env={})
    assert out.returncode != 0 and not (tmp_path / "runs").exists()


def test_a_missing_tracker_package_is_named_with_its_install_command(tmp_path, monkeypatch):
    import importlib.util

    from selflengthen.support.checks import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    s = fake_settings(tmp_path / "run", *FAKE, "tracking=tensorboard")
    with pytest.raises(ConfigError, match=r"selflengthen\[tensorboard\]"):
        tracking.check(s)


def test_the_grpo_trainer_reports_its_rewards_through_report_to(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from selflengthen.training.grpo_lora import GrpoConfig, train_grpo

    rows = [{"id": f"p{i}", "prompt": f"Write a detailed essay about topic {i}. Aim for about 20 words.",
             "lo": 18, "hi": 22} for i in range(4)]
    s = fake_settings(tmp_path / "run", *FAKE, "tracking=tensorboard")
    tracker = tracking.open_tracker(s)
    try:
        with tracking.training("round_001", "generator"):
            train_grpo(str(tiny_model_dir), rows, tmp_path / "out", None, GrpoConfig.from_dict(
                dict(max_steps=2, num_generations=2, prompts_per_step=2, batch_size=2, max_completion_length=16,
                     l_max_words=60, lr=1e-3, save_steps=1000)))
    finally:
        tracker.close()
    got = tb_scalars(s.run_dir / "tracking" / "tensorboard" / "train_generator" / "round_001")
    assert [step for step, _ in got["train/reward"]] == [1, 2]
    assert any("length" in tag for tag in got)  # the length reward's own mean


def test_the_trainers_metrics_reach_mlflow_as_a_nested_run(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from selflengthen.training.sft_lora import TrainConfig, train_lora

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    rows = [{"messages": [{"role": "user", "content": f"Write about topic {i}."},
                          {"role": "assistant", "content": "The committee met on Tuesday. " * (i + 2)}]} for i in range(4)]
    s = fake_settings(tmp_path / "run", *FAKE, "tracking=mlflow")
    tracker = tracking.open_tracker(s)
    parent = tracker.mine["id"]
    try:
        with tracking.training("round_001", "generator"):
            train_lora(str(tiny_model_dir), rows, tmp_path / "out", None,
                       TrainConfig(max_steps=3, grad_accum=1, lr=1e-3, save_steps=1000, warmup_ratio=0.0))
        tracking.log_round(tracker, {"round": 1, "stages": {"train": {"generator": {"loss": 1.5}}}})
    finally:
        tracker.close()
    client = MlflowClient(tracking_uri=tracking.mlflow_uri(s))
    runs = client.search_runs([client.get_experiment_by_name("selflengthen").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == 2 and len(children) == 1 and children[0].info.run_name == "round_001/generator"
    assert [m.step for m in client.get_metric_history(children[0].info.run_id, "loss")] == [1, 2, 3]
    assert [(m.step, m.value) for m in client.get_metric_history(parent, "train/generator/loss")] == [(1, 1.5)]
