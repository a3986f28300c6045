"""AgentWrite's plan, write and writer_sft stages on a scripted engine: re-draws, rejection reasons, and a
crash in the middle of writing that resumes at the next step of every chain, not at the item's start."""

from __future__ import annotations

import hashlib

import pytest

from conftest import fake_settings
from selflengthen.methods.base import load_method
from selflengthen.stages import plan, write, writer_sft
from selflengthen.stages.common import RoundContext
from selflengthen.runfolder.store import atomic_write_jsonl, read_jsonl

WORDS = ("amber basalt cobalt delta ember falcon granite harbor island juniper kettle lagoon marble nimbus onyx "
         "pebble quartz raven sable timber umbra velvet willow yonder zephyr anchor beacon cipher").split()

GOOD_PLAN = "\n".join(f"Paragraph {n} - Main Point: Part {n} of the answer - Word Count: 300 words" for n in (1, 2, 3))


def _unique_sentence(key: str) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    return " ".join(WORDS[b % len(WORDS)] for b in digest[:14]).capitalize() + "."


class ScriptedWriter:
    """Plans: garbage for the first attempt of item i0001, a good 3-step plan otherwise. Steps: an echoed
    header plus a unique sentence; the first try of step 1 of every item stops mid-sentence (re-drawn)."""

    def __init__(self, crash_after: int | None = None, seen: dict | None = None):
        self.calls: list[list[str]] = []
        self.adapters: set = set()
        self.crash_after = crash_after
        # seeds seen per request id: shared by the engines of one run, so "first try" means the run's first
        self.seen_seeds: dict[str, set] = {} if seen is None else seen

    def generate(self, requests, progress=None):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise RuntimeError("killed")
        self.calls.append([r.id for r in requests])
        self.adapters.update(r.adapter for r in requests)
        out = []
        for r in requests:
            user = r.messages[-1][1]
            if user.startswith("Plan a long answer"):
                first_try = r.params.seed not in self.seen_seeds.setdefault(r.id, set()) and not self.seen_seeds[r.id]
                self.seen_seeds[r.id].add(r.params.seed)
                out.append("Sure, I can help with that." if r.id.startswith("i0001") and first_try else GOOD_PLAN)
                continue
            item, step = r.id.rsplit("@", 1)
            seeds = self.seen_seeds.setdefault(r.id, set())
            seeds.add(r.params.seed)
            body = _unique_sentence(f"{r.id}|{r.params.seed}")
            if step == "1" and len(seeds) == 1:
                body = body.rstrip(".") + " and then"
            out.append(f"Paragraph {int(step) + 1}:\n{body}\n\nWord count: 300 words")
        return out


def _ctx(tmp_path, engine):
    s = fake_settings(tmp_path / "run", "method=agentwrite")
    ctx = RoundContext(s, 1, engine, {"writer": None}, method=load_method("agentwrite"))
    atomic_write_jsonl(ctx.stage_dir("self_instruct") / "instructions.jsonl",
                       [{"id": f"i{k:04d}", "prompt": f"Write a long essay about topic {k}."} for k in range(3)])
    return ctx


def test_the_method_declares_its_stages_and_sections():
    m = load_method("agentwrite")
    assert [st.name for st in m.stages] == ["self_instruct", "plan", "write", "sft_data", "train"]
    assert m.roles == ("writer",) and m.pair_sources() == (("write", "answers.jsonl"),) and m.answer_role == "writer"
    assert {"plan", "write", "sampling", "self_instruct"} <= set(m.config_sections())


def test_plan_write_and_sft_rows(tmp_path):
    engine = ScriptedWriter()
    ctx = _ctx(tmp_path, engine)
    p = plan.run(ctx)
    assert p["planned"] == 3 and p["plans_drawn"] == 4 and p["rejections"] == {"plan_unparseable": 1}
    assert p["mean_steps"] == 3 and p["mean_planned_words"] == 900
    plans = read_jsonl(ctx.stage_dir("plan") / "plans.jsonl")
    assert plans[0]["steps"][0] == {"n": 1, "point": "Part 1 of the answer", "words": 300}

    w = write.run(ctx)
    # 3 items x 3 steps, plus one re-draw of step 2 per item (it stopped mid-sentence)
    assert w["step_generations"] == 12 and w["written"] == 3 and w["passed"] == 3
    assert w["rejections"] == {"step_no_terminal_punctuation": 3}
    answers = {a["id"]: a for a in read_jsonl(ctx.stage_dir("write") / "answers.jsonl")}
    assert 1 <= len(answers) <= 3 and w["kept"] == len(answers)  # length-aware sampling may drop the shortest
    for a in answers.values():
        paragraphs = a["text"].split("\n\n")
        assert len(paragraphs) == 3 and not any("Paragraph" in x or "Word count" in x for x in paragraphs)
        assert a["steps"] == 3 and a["planned_words"] == 900
    # generations per answer: its write calls (3 steps + 1 re-draw) and its plan draws
    assert answers.get("i0000.s0", {"generations": 5})["generations"] == 5
    assert answers.get("i0001.s0", {"generations": 6})["generations"] == 6

    assert engine.adapters == {"writer"}  # plan.adapter and write.adapter default to the trained writer

    sft = writer_sft.run(ctx)
    rows = read_jsonl(ctx.stage_dir("sft_data") / "writer.jsonl")
    assert sft["rows"] == len(rows) == len(answers)
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": answers[rows[0]["id"]]["text"]}
    assert rows[0]["messages"][-2]["content"].startswith("Write a long essay about topic")


def test_a_crash_mid_write_resumes_at_the_next_step(tmp_path):
    seen: dict = {}
    ctx = _ctx(tmp_path, ScriptedWriter(seen=seen))
    plan.run(ctx)
    # checkpoint_every=3 (experiment=fake): one wave of 3 items is one chunk; die in the third wave
    ctx.engine = ScriptedWriter(crash_after=2, seen=seen)
    with pytest.raises(RuntimeError):
        write.run(ctx)
    logged = read_jsonl(ctx.stage_dir("write") / "steps.jsonl")
    assert len(logged) == 6 and {r["step"] for r in logged} == {0, 1}
    assert not (ctx.stage_dir("write") / "done.json").exists()

    resumed = ScriptedWriter(seen=seen)
    ctx.engine = resumed
    w = write.run(ctx)
    # nothing of steps 1 and the failed first try of step 2 is redone: the first wave re-draws step 2
    assert resumed.calls[0] == ["i0000.s0@1", "i0001.s0@1", "i0002.s0@1"]
    assert w["step_generations"] == 12 and w["written"] == 3

    reference_ctx = _ctx(tmp_path / "ref", ScriptedWriter())
    plan.run(reference_ctx)
    write.run(reference_ctx)
    same = read_jsonl(reference_ctx.stage_dir("write") / "answers.jsonl")
    assert read_jsonl(ctx.stage_dir("write") / "answers.jsonl") == same
