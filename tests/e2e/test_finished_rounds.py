"""A finished round is re-checked whenever it is used: every stage's done.json checksums are verified when
the loop treats a round as finished, and when collect or eval read it. A damaged stage is redone with the
stages after it (from its own item log: nothing is generated twice), and collect refuses to export fewer
pairs instead of leaving a damaged round out silently."""

from __future__ import annotations

import json

import pytest

from conftest import fake_settings
from recording import RecordingEngine
from selflengthen import recipe
from selflengthen.evidence import dataset
from selflengthen.evidence import heldout
from selflengthen.runfolder import layout
from selflengthen.runfolder.store import StoreError
from conftest import tree


def _run(run_dir, *overrides):
    engine = RecordingEngine()
    recipe.run(fake_settings(run_dir, *overrides), engine, lambda: "fake-model")
    return engine


def _drop_a_row(path):
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) >= 2
    path.write_text("".join(lines[1:]))


def _finished_times(run_dir, r):
    return {str(p.relative_to(run_dir)): json.loads(p.read_text())["finished"]
            for p in layout.round_dir(run_dir, r).rglob("done.json")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref")
    _run(run_dir)
    return tree(run_dir)


@pytest.mark.parametrize("damaged_round", [1, 2])
def test_a_row_deleted_from_a_finished_round_is_noticed_and_redone(tmp_path, caplog, reference, damaged_round):
    _run(tmp_path)
    before = _finished_times(tmp_path, damaged_round)
    _drop_a_row(layout.stage_dir(tmp_path, damaged_round, "extend") / "extended.jsonl")
    engine = _run(tmp_path)
    assert f"round {damaged_round}: the extend stage's artifacts no longer match" in caplog.text
    assert engine.calls() == []  # redone from the stage's own item log: nothing generated twice
    assert tree(tmp_path) == reference  # the row is back, and everything else is as it was
    after = _finished_times(tmp_path, damaged_round)
    redone = {k for k in after if after[k] != before[k]}
    assert redone == {f"round_{damaged_round:03d}/{s}/done.json"
                      for s in ("extend", "sft_data", "train/generator", "train/extender")}
    if damaged_round == 1:  # round 2 did not depend on the row (its adapters are the same): kept as it was
        assert "round 2" not in caplog.text


def test_a_changed_adapter_of_a_finished_round_is_noticed(tmp_path, caplog, reference):
    _run(tmp_path)
    config = layout.stage_dir(tmp_path, 1, "train") / "generator/adapter/adapter_config.json"
    config.write_text(config.read_text().replace('"digest": "', '"digest": "0'))
    _run(tmp_path)
    assert "train/generator" in caplog.text
    assert tree(tmp_path) == reference


def test_eval_and_collect_do_not_use_a_damaged_round(tmp_path, caplog):
    _run(tmp_path)
    _drop_a_row(layout.stage_dir(tmp_path, 2, "extend") / "extended.jsonl")
    assert sorted(heldout.finished_rounds(tmp_path)) == [0, 1]  # what eval reads
    assert "round 2 is not usable" in caplog.text
    with pytest.raises(StoreError) as err:  # collect would export fewer pairs: it refuses instead
        dataset.final_round(tmp_path)
    assert "Round 2" in str(err.value) and "Run the loop again" in str(err.value)
    _run(tmp_path)  # the loop redoes it ...
    last, _ = dataset.final_round(tmp_path)  # ... and collect uses every round again
    assert last == 2


def test_a_missing_done_record_is_damage(tmp_path, caplog, reference):
    _run(tmp_path)
    (layout.stage_dir(tmp_path, 1, "sft_data") / "done.json").unlink()
    assert sorted(layout.finished_rounds(tmp_path)) == []
    _run(tmp_path)
    assert tree(tmp_path) == reference
