"""Stage logic in isolation: extension cuts and streaming, SFT rows, self-instruct parsing."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil

from pathlib import Path

from conftest import fake_engine, fake_settings, finished_run
from selflengthen import recipe
from selflengthen.engines import session
from selflengthen.engines.base import SamplingParams
from selflengthen.engines.fake import _PLAN_ASK, FakeEngine
from selflengthen.stages import extend, self_instruct, sft_data
from selflengthen.stages.common import RoundContext, derive_seed
from selflengthen.runfolder.store import read_jsonl

P = ["Alpha one.", "Beta two.", "Gamma three.", "Delta four.", "Epsilon five.", "Zeta six."]


def test_first_half_rounds_up_and_keeps_separator():
    assert extend.first_half("\n\n".join(P)) == "\n\n".join(P[:3])
    assert extend.first_half("\n\n".join(P[:5])) == "\n\n".join(P[:3])
    assert extend.first_half("Only one paragraph.") == "Only one paragraph."
    # two blank-line paragraphs or fewer: falls back to single newlines
    assert extend.first_half("a.\nb.\nc.\nd.") == "a.\nb."


def test_keep_two_thirds_drops_the_rushed_tail():
    assert extend.keep_two_thirds("\n\n".join(P)) == "\n\n".join(P[:4])
    assert extend.keep_two_thirds("\n\n".join(P[:3])) == "\n\n".join(P[:2])
    assert extend.keep_two_thirds("\n\n".join(P[:4])) == "\n\n".join(P[:2])
    assert extend.keep_two_thirds("One.") == "One."
    assert extend.keep_two_thirds("") == ""


def test_drop_lines_removes_a_fifth_and_keeps_order():
    text = "\n".join(f"line {i}." for i in range(10))
    out = sft_data.drop_lines(text, 0.2, random.Random(1))
    kept = out.split("\n")
    assert len(kept) == 8 and kept == sorted(kept, key=lambda s: int(s.split()[1][:-1]))
    assert sft_data.drop_lines("single line.", 0.2, random.Random(1)) == "single line."
    assert sft_data.drop_lines(text, 0.2, random.Random(1)) == out  # seeded


def test_sft_rows_have_the_answer_last(tmp_path):
    s = fake_settings(tmp_path)
    row = {"id": "x", "instruction": "Write about tides.", "initial": "a.\nb.\nc.\nd.\ne.", "text": "LONG ANSWER."}
    gen = sft_data.generator_row(s.prompts, row)
    assert [m["role"] for m in gen["messages"]] == ["user", "assistant"]
    assert gen["messages"][0]["content"] == s.prompts["generate"]["user"].format(instruction=row["instruction"])
    assert gen["messages"][-1]["content"] == "LONG ANSWER."
    ext = sft_data.extender_row(s.prompts, row, 0.2, random.Random(0))
    user = ext["messages"][0]["content"]
    assert "Write about tides." in user and ext["messages"][-1]["content"] == "LONG ANSWER."
    assert sum(f"{c}." in user for c in "abcde") == 4  # one of five lines dropped


def test_parse_instruction():
    # the paper keeps the whole stripped completion (its stop strings end it)
    two_lines = " Write a long report on bees.\nCover their dances and their hives.\n"
    assert self_instruct.parse_instruction(two_lines) == "Write a long report on bees.\nCover their dances and their hives."
    assert self_instruct.parse_instruction("   \n") == ""
    # first_line: the first line, without a numbering prefix or quotes
    assert self_instruct.parse_instruction(" Write a long report on bees.\nInstruction 4: x", True) == \
        "Write a long report on bees."
    assert self_instruct.parse_instruction("\n  3. \"Draft a policy manual.\"", True) == "Draft a policy manual."
    assert self_instruct.parse_instruction("指令3：写一篇长文。", True) == "写一篇长文。"
    assert self_instruct.parse_instruction("   \n", True) == ""


class Recorder(FakeEngine):
    """The fake engine, keeping every request it was sent."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen = []

    def _one(self, r):
        self.seen.append(r)
        return super()._one(r)


PAPER_STOPS = {"\n\n---", "\n\n\n", "\n---", "---"}  # llama/llm_client.py


def test_every_generation_of_a_round_asks_as_the_paper(tmp_path):
    """Proposals are chat turns opened with the numbered list; answers and both extension stages stop on the
    paper's strings; stage 1 and stage 2 send the same template."""
    engine, lazy = Recorder(), fake_engine()
    lazy.inner = engine
    finished_run(tmp_path, "iterations=1", engine=lazy)
    proposals = [r for r in engine.seen if r.assistant_prefix.endswith("Instruction 3: ")]
    assert proposals and all(r.messages[-1][1].startswith("Your task is to construct user instructions") and
                             set(r.params.stop) == PAPER_STOPS | {"\nInstruction 4"} for r in proposals)
    stage1 = [r for r in engine.seen if "Original outline:" in r.messages[-1][1] and not r.assistant_prefix]
    stage2 = [r for r in engine.seen if "Original outline:" in r.messages[-1][1] and r.assistant_prefix]
    answers = [r for r in engine.seen if r.messages and len(r.messages[-1][1].split()) < 60
               and not r.assistant_prefix and r.params.max_new_tokens > 8]
    assert stage1 and stage2 and answers
    assert all(set(r.params.stop) == PAPER_STOPS for r in stage1 + stage2 + answers)


def test_self_instruct_asks_as_the_paper(tmp_path):
    """A chat turn with the task sentence, the answer opened with the numbered list, the paper's stops."""
    from omegaconf import OmegaConf

    prompts = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "selflengthen/conf/prompts/en.yaml"))
    a, b = "Write a travel guide to Lisbon.", "Write a history of the printing press."
    params = SamplingParams(stop=tuple(prompts["self_instruct"]["stop"]))
    r = self_instruct.proposal("w00.00000", prompts["self_instruct"], a, b, params, None)
    assert r.messages == (("user", "Your task is to construct user instructions that can guide the generation of "
                                   "long text."),)
    assert r.assistant_prefix == f"Instruction 1: {a}\nInstruction 2: {b}\nInstruction 3: "
    assert set(r.params.stop) == {"\n\n---", "\n\n\n", "\n---", "---", "\nInstruction 4"}
    bare = self_instruct.proposal("w00.00000", {**prompts["self_instruct"], "task": None}, a, b, params, None)
    assert bare.prompt == r.assistant_prefix and bare.messages is None
    assert prompts["extend"]["stage1"] == prompts["extend"]["stage2"]  # one "enrich, don't continue" template
    assert "not to continue writing content, but to enrich" in prompts["extend"]["stage1"]


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2)
    assert derive_seed(1, "a", 2) != derive_seed(1, "a", 3)
    assert 0 <= derive_seed("x") < 2**63


class CountingEngine(FakeEngine):
    """Counts its streams and the requests each stage sends through them."""

    def __init__(self):
        super().__init__()
        self.streams, self.stages = 0, []

    def stream(self, queue):
        self.streams += 1
        for c in super().stream(queue):
            yield c

    def _finish(self, r):
        self.stages.append("2" if r.assistant_prefix else "1")
        return super()._finish(r)


def test_extension_streams_every_pass_of_every_item_through_one_stream(tmp_path):
    s = fake_settings(tmp_path, "iterations=1", "run.checkpoint_every=1")
    recipe.run(s, session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")
    # redo only the extension stage with a counting engine
    (tmp_path / "round_001/extend/done.json").unlink()
    (tmp_path / "round_001/extend/passes.jsonl").unlink()
    engine = CountingEngine()
    ctx = RoundContext(s, 1, engine, {"generator": None, "extender": None})
    summary = extend.run(ctx)
    # one stream carries every request of the stage, whatever checkpoint_every is (durability only)
    assert engine.streams == 1
    assert engine.stages.count("1") > summary["items"] and "2" in engine.stages
    assert summary["requests"] == len(engine.stages)


class BudgetEngine(FakeEngine):
    """Every answer runs to its token budget (a model that never ends), as a real engine reports it: the
    fake text, finish_reason "length". The yes/no judge of self-instruct and the instructions end normally."""

    def __init__(self, plans_end: bool = False):
        super().__init__()
        self.plans_end = plans_end  # AgentWrite's plans end normally: only its written steps run on

    def _finish(self, r):
        c = super()._finish(r)
        plan = bool(self.plans_end and r.messages and _PLAN_ASK.search(r.messages[-1][1]))
        if r.messages is not None and r.params.max_new_tokens > 8 and not plan:
            return dataclasses.replace(c, finish_reason="length")
        return c


def _run_with(folder, engine, *overrides):
    from selflengthen.engines.session import LazyEngine

    s = fake_settings(folder, *overrides)
    lazy = LazyEngine({"name": "fake"}, lambda: "m")
    lazy.inner = engine  # the run's engine is this one
    recipe.run(s, lazy, lambda: "m")
    return s


def test_answers_cut_by_the_budget_never_become_training_rows(tmp_path):
    """A model whose every answer runs to the budget gives no training row at all, whatever the method: the
    samples are re-drawn and finally dropped, each counted as `unfinished`."""
    s = _run_with(tmp_path / "sl", BudgetEngine(), "iterations=1")
    r1 = tmp_path / "sl/round_001"
    assert read_jsonl(r1 / "initial/responses.jsonl") == []
    attempts = read_jsonl(r1 / "initial/attempts.jsonl")
    assert attempts and all(a["finish"] == "length" and a["reason"] == "unfinished" and not a["ok"] for a in attempts)
    assert len(attempts) == len({a["item"] for a in attempts}) * s.generate.max_attempts  # every try re-drawn
    for role in ("generator", "extender"):
        assert read_jsonl(r1 / f"sft_data/{role}.jsonl") == []
    summary = json.loads((r1 / "summary.json").read_text())
    assert summary["stages"]["initial"]["rejections"] == {"unfinished": len(attempts)}
    # the proposed instructions ran to their budget too: none is kept half-written (the pool fills in)
    candidates = read_jsonl(r1 / "self_instruct/candidates.jsonl")
    assert candidates and all(c["reason"] == "unfinished" for c in candidates)
    assert summary["rejections"]["unfinished"] == len(attempts) + len(candidates)
    # AgentWrite: every step cut by its budget is re-drawn, and no answer is written from them
    _run_with(tmp_path / "aw", BudgetEngine(plans_end=True), "iterations=1", "method=agentwrite")
    aw = tmp_path / "aw/round_001"
    steps = read_jsonl(aw / "write/steps.jsonl")
    assert read_jsonl(aw / "plan/plans.jsonl")  # the plans ended, their steps did not
    assert steps and all(r["reason"] == "step_unfinished" and r["finish"] == "length" for r in steps)
    assert read_jsonl(aw / "write/answers.jsonl") == []


class CutStage2(FakeEngine):
    """The fake extender, but every stage-2 continuation (the request with the stage-1 text pre-placed) runs to
    the budget; stage 1 ends normally (its tail is cut by design anyway)."""

    def _finish(self, r):
        c = super()._finish(r)
        return dataclasses.replace(c, finish_reason="length") if r.assistant_prefix else c


def test_an_extension_whose_continuation_ran_to_the_budget_is_rejected(tmp_path):
    s = fake_settings(tmp_path, "iterations=1", "extend.passes=1", "extend.max_attempts=2")
    recipe.run(s, session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")
    normal = read_jsonl(tmp_path / "round_001/extend/extended.jsonl")
    assert normal  # the fake extender grows texts: the same run keeps rows when the model ends its answers
    (tmp_path / "round_001/extend/done.json").unlink()
    (tmp_path / "round_001/extend/passes.jsonl").unlink()
    out = extend.run(RoundContext(s, 1, CutStage2(), {"generator": None, "extender": None}))
    passes = [r for r in read_jsonl(tmp_path / "round_001/extend/passes.jsonl") if not r.get("final")]
    assert passes and all(p["reason"] in ("unfinished", "empty_stage1") and not p["accepted"] for p in passes)
    assert all(p["finish"] == "length" for p in passes if p["reason"] == "unfinished")
    assert out["kept"] == 0 and read_jsonl(tmp_path / "round_001/extend/extended.jsonl") == []


def test_rows_longer_than_max_length_are_dropped_not_truncated(tmp_path):
    """A training row the trainer would cut (longer than train.max_length) is not trained on: counted as
    `truncated_row` in the role's record and the round's rejections; the rest train as before."""
    s = _run_with(tmp_path, FakeEngine(), "iterations=1", "run.defer_unused=false")
    r1 = tmp_path / "round_001"
    rows = read_jsonl(r1 / "sft_data/generator.jsonl")
    lengths = sorted(sum(len(m["content"].split()) for m in row["messages"]) for row in rows)
    assert len(set(lengths)) > 1
    limit = lengths[len(lengths) // 2]  # about half the rows are longer
    over = sum(n > limit for n in lengths)
    shutil.rmtree(r1 / "train")
    (r1 / "summary.json").unlink()
    s = _run_with(tmp_path, FakeEngine(), "iterations=1", "run.defer_unused=false", f"train.max_length={limit}",
                  "run.accept_drift=true")
    summary = json.loads((r1 / "summary.json").read_text())
    gen = summary["stages"]["train"]["generator"]
    assert gen["rejections"] == {"truncated_row": over} and gen["rows"] == len(rows) - over
    assert summary["rejections"]["truncated_row"] >= over


