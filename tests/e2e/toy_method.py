"""A method that exists only for tests: two stages and one role, built from the public pieces alone.

`draft` answers every seed instruction once with the `writer` adapter (re-drawn until the quality filter
passes) and writes `writer.jsonl` SFT rows; `train` is the shared train stage reading them. Selected with
`method.name=tests.e2e.toy_method` — no edit to the recipe, settings, ui or report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from selflengthen.writing import filters
from selflengthen.support import ui
from selflengthen.support.checks import rule
from selflengthen.engines.base import Request
from selflengthen.methods.base import Method, Stage
from selflengthen.stages.common import RoundContext, mean, redraws, resumable
from selflengthen.stages.train import train_stage
from selflengthen.runfolder.store import atomic_write_jsonl, open_log
from selflengthen.writing.text import count_words

NAME = "draft"


@dataclass(frozen=True)
class Draft:
    per_round: int = field(default=3, metadata=rule(ge=1))
    max_new_tokens: int = field(default=200, metadata=rule(ge=1))


@resumable(NAME)
def run_draft(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    cfg = ctx.cfg("draft")
    start = (ctx.round_no - 1) * cfg.per_round
    items = {f"r{ctx.round_no:03d}-d{i:03d}": ctx.s.seeds[(start + i) % len(ctx.s.seeds)] for i in range(cfg.per_round)}
    fcfg = filters.FilterConfig.from_dict(ctx.s.prompts["filter"])

    def request(item: str, prompt: str, attempt: int) -> Request:
        return Request.chat(item, ctx.messages(None, prompt), ctx.params(cfg.max_new_tokens, ctx.seed(item, attempt)),
                            adapter="writer")

    def judge(_prompt: str, text: str) -> tuple[bool, str]:
        r = filters.check(text, fcfg)
        return r.ok, r.reason

    log = open_log(folder / "attempts.jsonl")
    with ui.progress(f"round {ctx.round_no} · draft", len(items)) as advance:
        passed = redraws(log, items, request, judge, 5, ctx.engine, ctx.durability, advance)
    rows = [{"id": i, "messages": [{"role": "user", "content": items[i]}, {"role": "assistant", "content": rec["text"]}]}
            for i, rec in passed.items() if rec]
    atomic_write_jsonl(folder / "writer.jsonl", rows)
    words = [count_words(r["messages"][-1]["content"]) for r in rows]
    return {"drafts": len(rows), "mean_words": mean(words), "rejections": {}}, ["writer.jsonl"]


def brief(section: dict) -> str:
    return f"{section.get('drafts', 0)} drafts, {section.get('mean_words', 0):.0f} words avg"


METHOD = Method(
    name="tests.e2e.toy_method",
    roles=("writer",),
    stages=(Stage(NAME, run_draft, brief, config=(("draft", Draft),)), train_stage(NAME)),
    semantic_keys=("draft",),
    answer_role="writer",
)
