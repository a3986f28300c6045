"""write: AgentWrite's second step (DESIGN §7) — each plan is written one step (paragraph) per call.

An item is a chain (DESIGN §6, `stages.common.run_chains`): step 1, then step 2 given step 1, and so on;
a step's next request is queued on the engine stream as soon as the previous one is judged, so the items
advance independently and the engine stays full. Every judged step is a record of the item log (durable
every `run.checkpoint_every` records or `run.checkpoint_seconds` seconds), and a crash resumes every item
at its next step, not at its start.

A step's text is cleaned (`plan.clean_step`: echoed "Paragraph 3:" headers and word-count notes removed)
and must pass the quality filter on its own, meta-words aside (a lone paragraph may well mention a
"version"); a failing step is re-drawn up to `max_attempts`, and an item whose step runs out of attempts is
dropped (`step_attempts_exhausted`). The joined answer must pass the whole quality filter, as everywhere
else; then length-aware sampling keeps mostly the longer answers. A step's token budget follows its
planned word count (`tokens_per_word`), capped by `max_new_tokens`.

Artifacts: `steps.jsonl` (every step drawn and its verdict, appended durably), `answers.jsonl` (kept:
instruction -> the whole answer, with its word count and how many generations it cost).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from selflengthen.writing import filters
from selflengthen.methods import agentwrite_teacher
from selflengthen.support import ui
from selflengthen.support.checks import rule
from selflengthen.engines.base import Request
from selflengthen.methods.agentwrite_plans import PlanStep, clean_step, join_steps, write_messages
from selflengthen.writing.sampling import keep_indices
from selflengthen.stages.common import UNFINISHED, RoundContext, mean, preparer, resumable, run_chains
from selflengthen.stages.plan import NAME as PLANS
from selflengthen.runfolder.store import ItemLog, atomic_write_jsonl, open_log, read_jsonl
from selflengthen.writing.text import count_words

NAME = "write"


@dataclass(frozen=True)
class Write:
    """`write:` — how the steps of a plan are written."""

    max_attempts: int = field(default=3, metadata=rule(ge=1))
    tokens_per_word: float = field(default=2.0, metadata=rule(gt=0.0))
    max_new_tokens: int = field(default=2048, metadata=rule(ge=1))
    repair: bool = False  # cut chatter lines naming a meta-word off the edges before the filter (filters.repair)
    adapter: Optional[str] = "writer"  # who writes: the method's writer (default) or null = the base model


@dataclass
class Chain:
    """One item's progress, rebuilt from the log: the texts of its finished steps and the tries at the next."""

    texts: list = field(default_factory=list)
    tries: int = 0  # attempts spent on step len(texts)
    generations: int = 0  # all write calls spent on the item

    def add(self, record: dict) -> None:
        """Take one logged step record (records of a step other than the next one are ignored)."""
        if record["step"] != len(self.texts):
            return
        self.generations += 1
        if record["ok"]:
            self.texts.append(record["text"])
            self.tries = 0
        else:
            self.tries += 1


def chains(log: ItemLog, items: dict[str, dict]) -> dict[str, Chain]:
    """Every item's chain as the log leaves it (records are appended in order, so a step's passing record
    comes before any record of the next step)."""
    out = {i: Chain() for i in items}
    for r in log.records:
        if r["item"] in out:
            out[r["item"]].add(r)
    return out


def step_budget(words: int, cfg: Write) -> int:
    return max(1, min(cfg.max_new_tokens, math.ceil(words * cfg.tokens_per_word)))


@resumable(NAME)
def run(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    cfg, tpl = ctx.cfg("write"), ctx.s.prompts["agentwrite"]
    plans = read_jsonl(ctx.stage_dir(PLANS) / "plans.jsonl")
    items = {p["id"]: {**p, "steps": [PlanStep(**s) for s in p["steps"]]} for p in plans}
    fcfg = filters.FilterConfig.from_dict(ctx.s.prompts["filter"])
    step_cfg = dataclasses.replace(fcfg, meta_words=())
    prepare = preparer(cfg, fcfg)

    def request(item_id: str, c: Chain) -> Request:
        it = items[item_id]
        step = len(c.texts)
        messages = write_messages(tpl, it["instruction"], it["steps"], c.texts, step)
        params = ctx.params(step_budget(it["steps"][step].words, cfg), ctx.seed("write", item_id, step, c.tries))
        return Request.chat(f"{item_id}@{step}", messages, params, adapter=adapter)

    def open_(c: Chain, it: dict) -> bool:
        return len(c.texts) < len(it["steps"]) and c.tries < cfg.max_attempts

    def chain(i: str, c: Chain):
        """One item's steps in order (see stages.common.run_chains): ask, judge, log, go on or re-draw."""
        while open_(c, items[i]):
            step, tries = len(c.texts), c.tries
            done = yield request(i, c)
            text = prepare(clean_step(done.text))
            # a step the token budget cut is re-drawn like one that fails the filter: its end (and so a seam
            # of the joined answer) would not be where the model stopped
            verdict = filters.FilterResult(False, UNFINISHED) if done.finish_reason == "length" else \
                filters.check(text, step_cfg)
            record = {"id": f"{i}@{step}#{tries}", "item": i, "step": step, "attempt": tries, "text": text,
                      "ok": verdict.ok, "reason": "" if verdict.ok else f"step_{verdict.reason}",
                      "finish": done.finish_reason}
            yield [record]
            c.add(record)

    log = open_log(folder / "steps.jsonl")
    state = chains(log, items)
    with agentwrite_teacher.planner(ctx, cfg.adapter) as (engine, adapter), \
            ui.progress(f"round {ctx.round_no} · write", len(items)) as advance:
        advance(sum(not open_(state[i], items[i]) for i in items))
        run_chains(engine, log, (chain(i, state[i]) for i in items if open_(state[i], items[i])),
                   ctx.durability, advance)
    state = chains(log, items)  # as the log has it (with engine ranks, their shards merged into it)

    rejections: Counter = Counter(r["reason"] for r in log.records if not r["ok"])
    passed = []
    for i, it in items.items():
        c = state[i]
        if len(c.texts) < len(it["steps"]):
            rejections["step_attempts_exhausted"] += 1
            continue
        text = join_steps(c.texts)
        verdict = filters.check(text, fcfg)
        if not verdict.ok:
            rejections[f"answer_{verdict.reason}"] += 1
            continue
        passed.append((i, text, c.generations))
    sampling = ctx.cfg("sampling")
    keep = keep_indices([len(t) for _, t, _ in passed], sampling.a, sampling.p,
                        random.Random(ctx.seed("write-sampling")))
    rows = []
    for k in keep:
        i, text, generations = passed[k]
        it = items[i]
        rows.append({"id": i, "instruction_id": it["instruction_id"], "instruction": it["instruction"], "text": text,
                     "words": count_words(text), "chars": len(text), "steps": len(it["steps"]),
                     "planned_words": it["planned_words"], "generations": generations + 1 + it["attempt"]})
    atomic_write_jsonl(folder / "answers.jsonl", rows)
    written = sum(len(state[i].texts) == len(it["steps"]) for i, it in items.items())
    summary = {"items": len(items), "written": written, "passed": len(passed), "kept": len(rows),
               "mean_words": mean([r["words"] for r in rows]),
               "passed_mean_words": mean([count_words(t) for _, t, _ in passed]),
               "mean_planned_words": mean([r["planned_words"] for r in rows]),
               "step_generations": len(log), "rejections": dict(rejections)}
    return summary, ["answers.jsonl"]


def brief(section: dict) -> str:
    return (f"{section.get('kept', 0)} kept of {section.get('items', 0)} plans ({section.get('written', 0)} "
            f"written, {section.get('passed', 0)} passed), {section.get('mean_words', 0):.0f} words avg, "
            f"{section.get('step_generations', 0)} step calls")
