"""The loop's wiring, checked on what the stages asked for rather than on what the fakes answered.

A fake engine and a fake trainer make the outputs look right whether or not round 2 builds on round 1;
these tests record every request and every training call (tests/recording.py) and check that round 2
generates with round 1's adapters, that each role trains on from its own previous adapter, that stage 2
of extension continues from the first two thirds of stage 1, that extension enforces `min_growth`, and
that the stages apply length-aware sampling.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import fake_settings
from recording import RecordingEngine, RecordingTrainer, use_trainer, watch_rounds
from selflengthen import recipe
from selflengthen.runfolder import layout
from selflengthen.stages import extend
from selflengthen.stages.common import RoundContext
from selflengthen.runfolder.store import atomic_write_jsonl, read_jsonl

ROLES = ("generator", "extender")


def recorded_run(tmp_path: Path, monkeypatch, *overrides: str, engine: RecordingEngine | None = None):
    engine = engine or RecordingEngine()
    trainer = RecordingTrainer()
    watch_rounds(monkeypatch, engine)
    use_trainer(monkeypatch, trainer)
    summaries = recipe.run(fake_settings(tmp_path, *overrides), engine, lambda: "fake-model")
    return summaries, engine, trainer


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        run_dir = tmp_path_factory.mktemp("wiring")
        # every role of both rounds trained in line (the last round's deferred extender: test_recipe.py)
        summaries, engine, trainer = recorded_run(run_dir, mp, "run.defer_unused=false")
    finally:
        mp.undo()
    return run_dir, summaries, engine, trainer


def test_round_2_generates_with_round_1_adapters(two_rounds):
    run_dir, summaries, engine, _ = two_rounds
    out1 = layout.adapters_abs(run_dir, summaries[0]["adapters_out"])
    assert all(out1[role] and Path(out1[role], "adapter_config.json").exists() for role in ROLES)
    # round 1 starts from the base model
    assert engine.adapters_set(1)[0] == {role: None for role in ROLES}
    assert all(c.folder is None for c in engine.calls(1))
    # round 2: the engine is given round 1's adapters before it generates anything ...
    assert engine.adapters_set(2), "round 2 never called set_adapters"
    assert engine.adapters_set(2)[0] == out1
    # ... and every request that names an adapter runs with round 1's folder for that role
    named = [c for c in engine.calls(2) if c.adapter]
    assert {c.adapter for c in named} == set(ROLES)  # initial answers (generator) and extension (extender)
    for c in named:
        assert c.folder == out1[c.adapter], (c.id, c.adapter, c.folder)
    # the base-model requests (self-instruct proposes and judges with the base model, as in the paper)
    assert all(c.folder is None for c in engine.calls(2) if not c.adapter)


def test_each_role_trains_on_from_its_previous_adapter(two_rounds):
    run_dir, summaries, _, trainer = two_rounds
    by = {(c.round_no, c.role): c for c in trainer.calls}
    assert set(by) == {(r, role) for r in (1, 2) for role in ROLES}, trainer.calls
    out1 = layout.adapters_abs(run_dir, summaries[0]["adapters_out"])
    for role in ROLES:
        assert by[(1, role)].init_adapter is None  # round 1: the base model
        assert by[(2, role)].init_adapter == out1[role]  # round 2: its own round-1 adapter, not the other role's
        assert by[(2, role)].out_dir == str(run_dir / "round_002" / "train" / role)
        assert by[(1, role)].rows == summaries[0]["stages"]["sft_data"]["rows"] > 0
    assert summaries[1]["stages"]["train"]["generator"]["from"] == "round_001/train/generator/adapter"


def _expected_prefix(stage1_text: str) -> str:
    """The first two thirds of stage 1's paragraphs (rounded down, at least one), computed here on purpose
    rather than with extend.keep_two_thirds, so a wrong helper cannot vouch for itself."""
    paras = [p.strip() for p in stage1_text.strip().split("\n\n") if p.strip()]
    return "\n\n".join(paras[:max(1, 2 * len(paras) // 3)]) + "\n\n"


def test_stage_2_continues_from_two_thirds_of_stage_1(two_rounds):
    _, _, engine, _ = two_rounds
    last_stage1: dict[str, str] = {}
    checked = shortened = 0
    for c in engine.calls():
        if c.adapter != "extender":
            continue
        if not c.prefix:
            last_stage1[c.id] = c.text
            continue
        stage1 = last_stage1.pop(c.id)  # a stage-2 request always follows its own stage-1 answer
        assert c.prefix == _expected_prefix(stage1), c.id
        checked += 1
        shortened += c.prefix.strip() != stage1.strip()
    assert checked >= 4
    assert shortened >= 1  # some stage-1 texts had 2+ paragraphs, so the cut really happened


# --- extension's growth rule, on a scripted engine -----------------------------------------------------------

class Scripted(RecordingEngine):
    """Extension that grows a 100-word answer to exactly `growth` x, never more: stage 1 returns three
    paragraphs (two thirds kept: `keep` words), stage 2 the rest. Every word is fresh, so no filter fires."""

    def __init__(self, growth: float):
        super().__init__()
        self.target, self.n = round(100 * growth), 0

    def words(self, k: int) -> str:
        self.n += k
        return " ".join(f"w{self.n - k + i}" for i in range(k)) + "."

    def _answer(self, r) -> str:
        if not r.assistant_prefix:  # stage 1: 30 + 30 words kept, a rushed 10-word tail dropped
            return "\n\n".join([self.words(30), self.words(30), self.words(10)])
        return self.words(self.target - 60)  # stage 2: the candidate totals `target` words


def _one_initial_answer(s) -> None:
    text = " ".join(f"v{i}" for i in range(99)) + " end."  # 100 words, one paragraph
    atomic_write_jsonl(layout.stage_dir(s.run_dir, 1, "initial") / "responses.jsonl",
                       [{"id": "r001-i00000.s0", "instruction_id": "r001-i00000", "instruction": "Write about rivers.",
                         "text": text, "words": 100, "chars": len(text), "attempt": 0}])


@pytest.mark.parametrize("growth, min_growth, ok", [(1.1, None, False), (1.1, "1.05", True), (1.3, None, True)])
def test_extension_enforces_min_growth(tmp_path, growth, min_growth, ok):
    over = [f"extend.min_growth={min_growth}"] if min_growth else []  # None: the default (1.2)
    s = fake_settings(tmp_path, "sampling.a=0", "extend.samples=1", *over)
    assert s.extend.min_growth == (float(min_growth) if min_growth else 1.2)
    _one_initial_answer(s)
    engine = Scripted(growth)
    section = extend.run(RoundContext(s, 1, engine, {role: None for role in ROLES}))
    records = read_jsonl(tmp_path / "round_001/extend/passes.jsonl")
    finals = [r for r in records if r.get("final")]
    best = max(r["words"] for r in records if not r.get("final"))
    assert best == round(100 * growth)  # the script did what it says
    if ok:
        assert section["kept"] == 1 and finals[-1]["ok"]
    else:
        assert section["kept"] == 0 and section["passed"] == 0
        assert [f["reason"] for f in finals] == ["too_little_growth"] * s.extend.max_attempts
        assert section["rejections"]["too_little_growth"] == s.extend.max_attempts


# --- length-aware sampling is applied by the stages ---------------------------------------------------------

@pytest.mark.parametrize("a", [0.0, 20.0])
def test_stages_apply_length_aware_sampling(tmp_path, monkeypatch, a):
    summaries, _, _ = recorded_run(tmp_path, monkeypatch, "iterations=1", f"sampling.a={a}")
    st = summaries[0]["stages"]
    for stage, artifact in (("initial", "responses.jsonl"), ("extend", "extended.jsonl")):
        sec = st[stage]
        assert sec["passed"] >= 2, (stage, sec)  # enough to drop the shortest
        assert len(read_jsonl(tmp_path / "round_001" / stage / artifact)) == sec["kept"]
        if a == 0:
            assert sec["kept"] == sec["passed"], stage  # a = 0 keeps every passing item
        else:
            # a = 20 keeps only the longest few: the shortest passing item is never kept
            assert 1 <= sec["kept"] < sec["passed"], (stage, sec)
    if a:
        kept = read_jsonl(tmp_path / "round_001/initial/responses.jsonl")
        passed = [r for r in read_jsonl(tmp_path / "round_001/initial/attempts.jsonl") if r["ok"]]
        assert max(len(r["text"].strip()) for r in passed) == max(r["chars"] for r in kept)  # the longest stays


def test_summary_records_what_the_trainer_was_given(two_rounds):
    run_dir, summaries, _, trainer = two_rounds
    two = json.loads((run_dir / "round_002/summary.json").read_text())
    assert two["adapters_in"] == summaries[0]["adapters_out"]
    assert two["adapters_out"] == {role: f"round_002/train/{role}/adapter" for role in ROLES}
    assert len(trainer.calls) == 4


# --- a cut-off stage continues from its log -----------------------------------------------------------------

class Killed(Exception):
    pass


class DiesMidStage(RecordingEngine):
    """Raises (as a kill would end the process) at the `after`+1-th request that names `adapter`."""

    def __init__(self, adapter: str, after: int):
        super().__init__()
        self.adapter_name, self.left = adapter, after

    def _answer(self, r) -> str:
        if r.adapter == self.adapter_name:
            if self.left == 0:
                raise Killed(r.id)
            self.left -= 1
        return super()._answer(r)


@pytest.mark.parametrize("stage, log_name, adapter, after", [("initial", "attempts.jsonl", "generator", 5),
                                                             ("extend", "passes.jsonl", "extender", 9)])
def test_a_cut_off_stage_continues_from_its_log(tmp_path, monkeypatch, stage, log_name, adapter, after):
    over = ("iterations=1", "run.checkpoint_every=1")
    _, whole, _ = recorded_run(tmp_path / "ref", monkeypatch, *over)
    total = sum(c.adapter == adapter for c in whole.calls())
    with pytest.raises(Killed):
        recipe.run(fake_settings(tmp_path / "cut", *over), DiesMidStage(adapter, after), lambda: "fake-model")
    log = tmp_path / "cut/round_001" / stage / log_name
    saved = [r for r in read_jsonl(log) if not r.get("final")]
    assert saved and not (log.parent / "done.json").exists()  # the kill landed inside the stage
    _, resumed, _ = recorded_run(tmp_path / "cut", monkeypatch, *over)
    again = sum(c.adapter == adapter for c in resumed.calls())
    # every saved record stands for at least one request that is not made again
    assert again <= total - len(saved), (again, total, len(saved))
    assert {json.dumps(r, sort_keys=True) for r in saved} <= {json.dumps(r, sort_keys=True) for r in read_jsonl(log)}
    from conftest import tree

    assert tree(tmp_path / "cut") == tree(tmp_path / "ref")
