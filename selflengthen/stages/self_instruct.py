"""self_instruct: grow the instruction pool (DESIGN §1.1).

The model sees two instructions sampled from the pool as a numbered list in completion mode and writes a
third; a chat-mode yes/no judge decides whether it suits a long article; it is kept if the judge says yes,
its length is within the word bounds and it is not already in the pool. Waves of `per_wave` completions
run until `num_new` are kept or `max_waves` is reached. If the waves end short and `fill_from_pool` is on,
seed instructions that no round has used yet fill the gap (recorded as `source: pool`), so a weak model
cannot starve a round.

Artifacts: `candidates.jsonl` (every proposal and the verdict, appended durably), `instructions.jsonl`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from selflengthen import ui
from selflengthen.engines.base import Request
from selflengthen import layout
from selflengthen.config import rule
from selflengthen.stages.common import RoundContext, rejection_counts, resumable
from selflengthen.store import atomic_write_jsonl, iter_chunks, open_log, read_jsonl
from selflengthen.text import count_words

NAME = "self_instruct"


@dataclass(frozen=True)
class SelfInstruct:
    """`self_instruct:` in conf/config.yaml."""

    num_new: int = field(default=64, metadata=rule(ge=1))
    per_wave: int = field(default=128, metadata=rule(ge=1))
    max_waves: int = field(default=5, metadata=rule(ge=1))
    adapter: Optional[str] = None  # None = the base model (paper), or an adapter name of the method
    min_words: int = field(default=3, metadata=rule(ge=0))
    max_words: int = field(default=500, metadata=rule(ge=1))
    max_new_tokens: int = field(default=96, metadata=rule(ge=1))
    fill_from_pool: bool = True

    def check(self) -> None:
        if self.min_words >= self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must be below max_words ({self.max_words}). "
                             f"Fix: use the paper's 3 and 500")
_LEAD = re.compile(r"^\s*(?:instruction\s*\d*\s*[:：.]|指令\s*\d*\s*[:：.]|\d+\s*[.:：)])\s*", re.IGNORECASE)


def parse_instruction(completion: str) -> str:
    """The third instruction: the first non-empty line, without a numbering prefix or wrapping quotes."""
    for line in completion.splitlines():
        line = _LEAD.sub("", line).strip().strip('"“”').strip()
        if line:
            return line
    return ""


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def earlier_instructions(ctx: RoundContext) -> list[str]:
    out = []
    for r in range(1, ctx.round_no):
        path = layout.stage_dir(ctx.s.run_dir, r, NAME) / "instructions.jsonl"
        out += [row["prompt"] for row in read_jsonl(path)]
    return out


@resumable(NAME)
def run(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    cfg, tpl = ctx.cfg("self_instruct"), ctx.s.prompts["self_instruct"]
    earlier = earlier_instructions(ctx)
    pool = list(ctx.s.seeds) + earlier
    seen = {_norm(p) for p in pool}
    log = open_log(folder / "candidates.jsonl")
    seen |= {_norm(r["text"]) for r in log.records if r["ok"]}

    with ui.progress(f"round {ctx.round_no} · self-instruct", cfg.num_new) as advance:
        advance(sum(r["ok"] for r in log.records))
        for wave in range(cfg.max_waves):
            if sum(r["ok"] for r in log.records) >= cfg.num_new:
                break
            ids = [f"w{wave:02d}.{j:05d}" for j in range(cfg.per_wave)]
            for part in iter_chunks([i for i in ids if i not in log], ctx.s.checkpoint_every):
                records = _propose_and_judge(ctx, part, pool, seen, tpl)
                log.append(records)
                advance(sum(r["ok"] for r in records))

    kept = [r["text"] for r in log.records if r["ok"]][:cfg.num_new]
    sources = ["self_instruct"] * len(kept)
    if len(kept) < cfg.num_new and cfg.fill_from_pool:
        used = {_norm(p) for p in earlier + kept}
        unused = [p for p in ctx.s.seeds if _norm(p) not in used]
        random.Random(ctx.seed("si-fill")).shuffle(unused)
        fill = unused[:cfg.num_new - len(kept)]
        kept += fill
        sources += ["pool"] * len(fill)
    rows = [{"id": f"r{ctx.round_no:03d}-i{n:05d}", "prompt": p, "source": src}
            for n, (p, src) in enumerate(zip(kept, sources))]
    atomic_write_jsonl(folder / "instructions.jsonl", rows)
    summary = {"instructions": len(rows), "from_pool": sources.count("pool"), "proposed": len(log),
               "rejections": rejection_counts(log)}
    return summary, ["instructions.jsonl"]


def _propose_and_judge(ctx: RoundContext, ids: list[str], pool: list[str], seen: set, tpl: dict) -> list[dict]:
    cfg = ctx.cfg("self_instruct")
    proposals = []
    for i in ids:
        a, b = random.Random(ctx.seed("si-pick", i)).sample(pool, 2)
        prompt = tpl["fewshot"].format(ins1=a, ins2=b)
        params = ctx.params(cfg.max_new_tokens, ctx.seed("si-gen", i), stop=tpl.get("stop", ()))
        proposals.append(Request.completion(i, prompt, params, adapter=cfg.adapter))
    texts = [parse_instruction(t) for t in ctx.engine.generate(proposals)]

    records, to_judge = [], []
    for i, text in zip(ids, texts):
        words = count_words(text)
        reason = ""
        if not cfg.min_words < words < cfg.max_words:
            reason = "instruction_length"
        elif _norm(text) in seen:
            reason = "duplicate_instruction"
        records.append({"id": i, "text": text, "words": words, "ok": False, "reason": reason})
        if not reason:
            seen.add(_norm(text))  # a later proposal in this chunk that repeats it is a duplicate
            to_judge.append(records[-1])

    judge_params = lambda i: ctx.params(4, ctx.seed("si-judge", i))  # noqa: E731 — yes/no needs few tokens
    answers = ctx.engine.generate([
        Request.chat(r["id"], ctx.messages(None, tpl["judge"].format(instruction=r["text"])), judge_params(r["id"]),
                     adapter=cfg.adapter) for r in to_judge])
    yes = tuple(w.lower() for w in tpl.get("judge_yes", ["yes"]))
    for r, answer in zip(to_judge, answers):
        r["judge"] = answer.strip()
        r["ok"] = answer.strip().lower().startswith(yes)
        r["reason"] = "" if r["ok"] else "judged_not_long_form"
        if not r["ok"]:
            seen.discard(_norm(r["text"]))
    return records


def brief(section: dict) -> str:
    pool = f" ({section['from_pool']} from the pool)" if section.get("from_pool") else ""
    return f"{section.get('instructions', 0)} instructions{pool}"
