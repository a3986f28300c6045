"""The report of a finished fake run: one table row per round with the summary's numbers, three valid PNGs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE, REPO, fake_engine, finished_run
from selflengthen.evidence import heldout
from selflengthen.evidence import tables

ENV = {**os.environ, "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}
PNG = b"\x89PNG\r\n\x1a\n"




@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    s = finished_run(tmp_path_factory.mktemp("run"), "eval.limit=8")
    heldout.evaluate_run(s, fake_engine())
    return s.run_dir


def assert_valid_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_one_row_per_round_with_the_summary_numbers(run_dir):
    rep = tables.build_report(run_dir)
    assert [r["round"] for r in rep["rounds"]] == [1, 2]
    for row in rep["rounds"]:
        s = json.loads((run_dir / f"round_{row['round']:03d}/summary.json").read_text())
        assert row["sections"] == s["stages"] and row["rejections"] == s["rejections"]
        # each stage's line is its own brief of its own section
        assert list(row["stages"]) == ["self_instruct", "initial", "extend", "sft_data", "train"]
        assert row["stages"]["self_instruct"] == f"{s['stages']['self_instruct']['instructions']} instructions"
        assert f"{s['stages']['extend']['kept']} kept" in row["stages"]["extend"]
        assert f"loss {s['stages']['train']['generator']['loss']:.3f}" in row["stages"]["train"]
        doc = json.loads((run_dir / f"eval/round_{row['round']:03d}.json").read_text())
        assert row["eval"]["mean_words"] == doc["mean_words"] and row["eval"]["s_l"] == doc["s_l"]
    assert rep["base_eval"]["n"] == 8
    assert tables.report_table(rep).row_count == 2 * 5  # a line per round and stage
    assert tables.eval_table(rep).row_count == 3  # round 0 (the base model) too
    json.dumps(rep)  # plain data


def test_tables_render(run_dir):
    from rich.console import Console

    console = Console(record=True, width=100)
    tables.print_report(tables.build_report(run_dir), console)
    text = console.export_text()
    assert "selflengthen run" in text and "Held-out eval" in text and "Rejections by reason" in text


def test_three_valid_pngs_and_report_json(run_dir):
    rep = tables.write_report(run_dir, show=False)
    paths = [run_dir / p for p in rep["plots"]]
    assert [p.name for p in paths] == ["lengths.png", "eval.png", "requested_vs_generated.png"]
    for p in paths:
        assert p.parent == run_dir / "report"
        assert_valid_png(p)
    assert json.loads((run_dir / "report/report.json").read_text())["rounds"] == rep["rounds"]


def test_the_loop_ends_with_the_report_and_a_plot_failure_never_fails_it(tmp_path, monkeypatch, caplog):
    finished_run(tmp_path / "ok", "iterations=1", "report.plots=true")
    for name in tables.PLOTS:  # no eval yet: the eval plots say so, but exist
        assert_valid_png(tmp_path / "ok/report" / name)

    def broken(_run_dir, _method=None):
        raise RuntimeError("no display")

    monkeypatch.setattr(tables, "plot_report", broken)
    finished_run(tmp_path / "broken", "iterations=1", "report.plots=true")  # returns normally
    assert (tmp_path / "broken/round_001/summary.json").exists()
    assert "could not write the report" in caplog.text and "no display" in caplog.text


def test_cli_writes_the_report(tmp_path):
    finished_run(tmp_path / "x", "iterations=1")  # experiment=fake draws no plots in the loop
    cmd = [sys.executable, "-m", "selflengthen", "report", *FAKE, "iterations=1", f"run.root={tmp_path}", "run.name=x"]
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in tables.PLOTS:
        assert_valid_png(tmp_path / "x/report" / name)
    assert json.loads((tmp_path / "x/report/report.json").read_text())["rounds"][0]["round"] == 1


def _scored(texts: dict[str, list[str]]) -> dict:
    """An eval document's aggregates from real scoring: `open` texts answer open prompts, `constrained`
    texts answer "about 100 words" prompts."""
    from selflengthen.writing import filters

    fcfg = filters.FilterConfig()
    rows = [heldout.score_row({"prompt": "Write.", "type": "none"}, t, fcfg) for t in texts.get("open", [])]
    rows += [heldout.score_row({"prompt": "Write.", "type": "about", "target": 100}, t, fcfg)
             for t in texts.get("constrained", [])]
    return heldout.aggregate(rows)


def test_the_eval_plot_shows_the_final_model_and_each_groups_pass_rate():
    good = " ".join(f"Sentence number {i} is here." for i in range(20))  # 100 words, passes the filter
    loop = "again " * 300  # a token loop: fails the filter
    evals = {0: _scored({"open": [good, good], "constrained": [good, good]}),
             1: _scored({"open": [good, loop], "constrained": [good, good]}),
             "final": _scored({"open": [loop, loop], "constrained": [good, loop]})}
    data = tables.eval_series(evals)
    assert data["x"] == [0, 1, 2] and data["labels"] == ["0", "1", "final"]  # the final model one step right
    assert data["words"]["mean (open prompts)"] == [100, 200, 300]
    assert data["scores"]["filter pass, open"] == [1.0, 0.5, 0.0]  # the open prompts' degeneration shows ...
    assert data["scores"]["filter pass, constrained"] == [1.0, 1.0, 0.5]  # ... apart from the constrained ones
    assert data["scores"]["length score"][:2] == [1.0, 1.0] and data["scores"]["length score"][2] < 1.0
    # without open prompts: one pass rate over all rows, lengths over all rows; no final, no extra position
    only = tables.eval_series({0: _scored({"constrained": [good]}), 2: _scored({"constrained": [loop]})})
    assert only["x"] == [0, 2] and list(only["scores"])[-1] == "filter pass rate"
    assert list(only["words"]) == ["mean", "median"]
    assert tables.eval_series({}) == {"x": [], "labels": [], "words": {"mean": [], "median": []},
                                      "scores": {"length score": [], "S_l / 100": [], "filter pass rate": []}}


def test_the_eval_plot_draws_a_run_with_a_final_eval(run_dir, tmp_path):
    evals = tables._evals(run_dir)
    evals["final"] = evals[max(k for k in evals if isinstance(k, int))]
    assert_valid_png(tables._plot_eval(evals, tmp_path / "eval.png"))
