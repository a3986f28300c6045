"""The loop end to end with the deterministic fake engine and trainer: artifacts, summaries, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import fake_settings, run_fake, tree
from selflengthen import recipe
from selflengthen.runfolder.manifest import DriftError
from selflengthen.runfolder.store import read_jsonl


def test_two_rounds_write_every_artifact_and_chain_adapters(tmp_path):
    summaries, _ = run_fake(tmp_path)
    assert [s["round"] for s in summaries] == [1, 2]
    for r in (1, 2):
        rd = tmp_path / f"round_{r:03d}"
        for stage in ("self_instruct", "initial", "extend", "sft_data",
                      "train/generator", "train/extender"):
            assert (rd / stage / "done.json").exists(), stage
        s = json.loads((rd / "summary.json").read_text())
        for key in ("round", "method", "stages", "rejections", "adapters_in", "adapters_out", "seconds"):
            assert key in s
        st = s["stages"]
        assert list(st) == ["self_instruct", "initial", "extend", "sft_data", "train"]  # the method's order
        assert st["self_instruct"]["instructions"] == 4
        assert st["initial"]["kept"] > 0 and st["extend"]["kept"] > 0
        assert st["extend"]["mean_words"] > st["initial"]["mean_words"]  # extension lengthens
        assert st["train"]["generator"]["loss"] is not None
        if r == 1:
            assert st["train"]["extender"]["loss"] is not None
        else:  # the last round leaves the extender for later (nothing after it uses it): test_deferred_*
            assert st["train"]["extender"]["deferred"] and st["train"]["extender"]["loss"] is None
        assert set(s["seconds"]) >= {"self_instruct", "initial", "extend", "sft_data", "train_generator"}
    one, two = summaries
    assert one["adapters_in"] == {"generator": None, "extender": None}
    assert two["adapters_in"] == one["adapters_out"]  # round 2 generates with round 1's adapters
    # stored relative to the run folder, so a moved or copied run keeps using its own adapters
    assert one["adapters_out"] == {r: f"round_001/train/{r}/adapter" for r in ("generator", "extender")}
    # the filter really rejected things, and the reasons were recorded
    assert sum(one["rejections"].values()) > 0
    assert json.loads((tmp_path / "manifest.json").read_text())["rounds_complete"] == 2


def test_stage_outputs_are_consistent(tmp_path):
    run_fake(tmp_path, "iterations=1")
    rd = tmp_path / "round_001"
    instructions = read_jsonl(rd / "self_instruct/instructions.jsonl")
    assert len(instructions) == 4 and len({i["id"] for i in instructions}) == 4
    initial = read_jsonl(rd / "initial/responses.jsonl")
    ids = {i["id"] for i in instructions}
    assert all(r["instruction_id"] in ids for r in initial)
    extended = read_jsonl(rd / "extend/extended.jsonl")
    assert all(r["words"] > 1.2 * r["initial_words"] for r in extended)  # min_growth honoured
    gen = read_jsonl(rd / "sft_data/generator.jsonl")
    ext = read_jsonl(rd / "sft_data/extender.jsonl")
    assert [g["id"] for g in gen] == [e["id"] for e in ext] == [r["id"] for r in extended]
    assert all(g["messages"][-1]["content"] == r["text"] for g, r in zip(gen, extended))


def test_rerun_skips_finished_work_without_loading_a_model(tmp_path):
    run_fake(tmp_path)
    before = tree(tmp_path)
    _, engine = run_fake(tmp_path)
    assert engine.inner is None  # nothing to generate: the engine was never even created
    assert tree(tmp_path) == before


def test_same_seed_same_artifacts(tmp_path):
    run_fake(tmp_path / "a")
    run_fake(tmp_path / "b")
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_more_iterations_continue_from_last_adapters(tmp_path):
    run_fake(tmp_path / "once", "iterations=1")
    first = json.loads((tmp_path / "once/round_001/summary.json").read_text())
    assert first["stages"]["train"]["extender"]["deferred"] and first["adapters_out"]["extender"] is None
    assert not (tmp_path / "once/round_001/train/extender/adapter").exists()  # the last round's extender waits
    summaries, _ = run_fake(tmp_path / "once", "iterations=2")
    again = json.loads((tmp_path / "once/round_001/summary.json").read_text())
    # round 1 is untouched but for the extender it left for later, trained now that round 2 needs it
    assert {k: v for k, v in again["stages"].items() if k != "train"} == {
        k: v for k, v in first["stages"].items() if k != "train"}
    assert again["stages"]["train"]["generator"] == first["stages"]["train"]["generator"]
    assert again["stages"]["train"]["extender"]["loss"] is not None
    assert again["adapters_out"] == {r: f"round_001/train/{r}/adapter" for r in ("generator", "extender")}
    assert summaries[1]["adapters_in"] == summaries[0]["adapters_out"] == again["adapters_out"]
    # ... into the very adapter (data and parent) and records a straight two-round run has
    run_fake(tmp_path / "straight", "iterations=2")
    assert tree(tmp_path / "once") == tree(tmp_path / "straight")


def test_defer_unused_false_trains_every_role_and_what_an_earlier_run_left(tmp_path):
    run_fake(tmp_path / "all", "iterations=1", "run.defer_unused=false")
    s = json.loads((tmp_path / "all/round_001/summary.json").read_text())
    assert s["stages"]["train"]["extender"]["loss"] is not None
    assert (tmp_path / "all/round_001/train/extender/adapter/adapter_config.json").exists()
    run_fake(tmp_path / "later", "iterations=1")  # deferred ...
    _, engine = run_fake(tmp_path / "later", "iterations=1", "run.defer_unused=false")  # ... trained on request
    assert engine.inner is None  # training only: no generation
    assert tree(tmp_path / "later") == tree(tmp_path / "all")


def test_a_deferred_training_cut_off_resumes_and_trains_nothing_twice(tmp_path, monkeypatch):
    from selflengthen import training
    from selflengthen.training.fake import fake_train_lora

    run_fake(tmp_path / "run", "iterations=1")
    calls: list[str] = []

    def crashing(model_path, rows, out_dir, init_adapter, cfg=None, progress=None):
        calls.append(Path(out_dir).relative_to(tmp_path / "run").as_posix())
        if len(calls) == 1:
            raise RuntimeError("killed")
        return fake_train_lora(model_path, rows, out_dir, init_adapter, cfg, progress)

    monkeypatch.setattr(training, "trainer_for", lambda backend: crashing)
    with pytest.raises(RuntimeError, match="killed"):
        run_fake(tmp_path / "run", "iterations=2")
    s = json.loads((tmp_path / "run/round_001/summary.json").read_text())
    assert s["stages"]["train"]["extender"]["deferred"]  # still owed: the next run trains it
    assert not (tmp_path / "run/round_002").exists()  # round 2 never starts without round 1's extender
    run_fake(tmp_path / "run", "iterations=2")
    # the extender once more, then round 2: generator trained, its own extender deferred; round 1's generator
    # was never trained again
    assert calls == ["round_001/train/extender", "round_001/train/extender", "round_002/train/generator"]
    monkeypatch.undo()
    run_fake(tmp_path / "straight", "iterations=2")
    assert tree(tmp_path / "run") == tree(tmp_path / "straight")


def test_drift_is_refused_with_the_keys_and_the_ways_out(tmp_path):
    run_fake(tmp_path, "iterations=1")
    with pytest.raises(DriftError) as err:
        run_fake(tmp_path, "iterations=2", "sampling.a=1.0", "extend.passes=3")
    msg = str(err.value)
    assert "sampling.a" in msg and "extend.passes" in msg
    assert "run.name=" in msg and "run.accept_drift=true" in msg
    assert not (tmp_path / "round_002").exists()  # nothing ran


def test_drift_override_continues_and_is_recorded(tmp_path):
    run_fake(tmp_path, "iterations=1")
    summaries, _ = run_fake(tmp_path, "iterations=2", "sampling.a=1.0", "run.accept_drift=true")
    assert len(summaries) == 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["history"][-1]["accepted_drift"] == ["sampling.a"]
    assert manifest["semantic"]["sampling"]["a"] == 1.0


def test_throughput_knobs_are_not_drift(tmp_path):
    run_fake(tmp_path, "iterations=1")
    run_fake(tmp_path, "iterations=1", "run.checkpoint_every=50", "engine.delay=0.0")


def test_corrupt_artifact_is_reported_and_redone(tmp_path, caplog):
    run_fake(tmp_path, "iterations=1")
    reference = tree(tmp_path)
    rd = tmp_path / "round_001"
    (rd / "summary.json").unlink()  # the round is not finished yet...
    responses = rd / "initial/responses.jsonl"
    responses.write_text(responses.read_text()[:50])  # ...and one of its artifacts was truncated
    run_fake(tmp_path, "iterations=1")
    assert "initial" in caplog.text and "redoing" in caplog.text
    assert tree(tmp_path) == reference


def test_torn_log_tail_is_cut_and_redone(tmp_path, caplog):
    run_fake(tmp_path / "ref", "iterations=1")
    run_fake(tmp_path / "cut", "iterations=1")
    rd = tmp_path / "cut/round_001"
    log = rd / "initial/attempts.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    for stage in ("initial", "extend", "sft_data", "train"):
        for p in (rd / stage).rglob("done.json"):
            p.unlink()
    (rd / "summary.json").unlink()
    log.write_text("".join(lines[:-2]) + lines[-2][:17])  # the process died mid-append
    run_fake(tmp_path / "cut", "iterations=1")
    assert "torn" in caplog.text
    assert tree(tmp_path / "cut") == tree(tmp_path / "ref")
