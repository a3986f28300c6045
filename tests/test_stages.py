"""Stage logic in isolation: extension cuts and streaming, SFT rows, self-instruct parsing."""

from __future__ import annotations

import random

from pathlib import Path

from conftest import fake_engine, fake_settings, finished_run
from selflengthen import engine_session, recipe
from selflengthen.engines.base import SamplingParams
from selflengthen.engines.fake import FakeEngine
from selflengthen.stages import extend, self_instruct, sft_data
from selflengthen.stages.common import RoundContext, derive_seed
from selflengthen.store import read_jsonl

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

    prompts = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf/prompts/en.yaml"))
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
    recipe.run(s, engine_session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")
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


class FloorEngine(FakeEngine):
    """Records each extension request's stage and min_new_tokens."""

    def __init__(self):
        super().__init__()
        self.floors = []

    def _finish(self, r):
        self.floors.append(("2" if r.assistant_prefix else "1", r.params.min_new_tokens,
                            len(r.assistant_prefix.split())))
        return super()._finish(r)


def test_force_growth_puts_a_floor_under_stage_2_only(tmp_path):
    def extended(folder, *overrides):
        s = fake_settings(folder, "iterations=1", "extend.passes=1", *overrides)
        recipe.run(s, engine_session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")
        (folder / "round_001/extend/done.json").unlink()
        (folder / "round_001/extend/passes.jsonl").unlink()
        engine = FloorEngine()
        return extend.run(RoundContext(s, 1, engine, {"generator": None, "extender": None})), engine.floors

    _, plain_floors = extended(tmp_path / "plain")
    _, floors = extended(tmp_path / "forced", "extend.force_growth=2.0")
    assert all(f == 0 for _, f, _ in plain_floors)
    assert all(f == 0 for stage, f, _ in floors if stage == "1")
    # the floor is what the continuation needs to take the candidate to 2x the text it extends: 0 only when
    # the stage-1 prefix alone is that long
    second = [(f, prefix) for stage, f, prefix in floors if stage == "2"]
    shortest = min(r["words"] for r in read_jsonl(tmp_path / "forced/round_001/initial/responses.jsonl"))
    assert all(f > 0 or prefix >= 2 * shortest for f, prefix in second) and any(f > 0 for f, _ in second)
