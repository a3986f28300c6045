"""The report's plots show data, not only axes: a PNG that is a valid image of empty axes fails here.

Data are drawn in matplotlib's colour cycle (blue, orange, green, ...); axes, ticks and labels are black or
grey on white. So a plot with data has many saturated pixels, and an empty one has (almost) none — the check
is shown to tell the two apart on an empty figure drawn the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import fake_engine, finished_run
from selflengthen.evidence import heldout
from selflengthen.evidence import tables


def coloured_share(path: Path) -> float:
    """Share of pixels whose colour is saturated (max - min channel > 0.25): data, not axes or text."""
    import matplotlib.image
    import numpy as np

    rgb = matplotlib.image.imread(str(path))[..., :3]
    return float(np.mean(rgb.max(axis=-1) - rgb.min(axis=-1) > 0.25))


@pytest.fixture(scope="module")
def plots(tmp_path_factory) -> list[Path]:
    s = finished_run(tmp_path_factory.mktemp("run"), "eval.limit=8")
    heldout.evaluate_run(s, fake_engine())
    return tables.plot_report(s.run_dir)


def test_every_plot_has_drawn_data(plots):
    assert [p.name for p in plots] == list(tables.PLOTS)
    for p in plots:
        assert coloured_share(p) > 0.002, f"{p.name} looks empty"


def test_the_check_fails_on_empty_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_xlabel("words")
    ax.set_ylabel("count")
    ax.set_title("round 1 vs round 2")
    fig.savefig(tmp_path / "empty.png")
    plt.close(fig)
    assert coloured_share(tmp_path / "empty.png") < 0.0005


def test_grpo_training_logs_get_their_own_plot(tmp_path):
    """A run trained with GRPO (its train folders hold per-step reward logs) gets grpo.png with data; one
    without has no such plot."""
    import json

    s = finished_run(tmp_path / "run", "iterations=1")
    assert tables.GRPO_PLOT not in [p.name for p in tables.plot_report(s.run_dir)]
    for where, steps in (("round_001/train/generator", 6), ("final/rl/generator", 4)):
        folder = s.run_dir / where
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(
            {"step": i + 1, "rewards/length/mean": 0.5 + 0.05 * i, "rewards/repetition/mean": 1.0,
             "answer_words": 80 - 3 * i}) + "\n" for i in range(steps)))
    logs = tables.grpo_logs(s.run_dir)
    assert [label for label, _ in logs] == ["round 1 generator", "rl generator"] and len(logs[1][1]) == 4
    plots = tables.plot_report(s.run_dir)
    assert plots[-1].name == tables.GRPO_PLOT and coloured_share(plots[-1]) > 0.002
