"""plan: AgentWrite's first step (DESIGN §7) — the model plans each answer as one line per paragraph.

Every instruction of the round gets `samples` plans; a plan that `selflengthen.methods.agentwrite_plans.parse_plan` rejects
(empty, unparseable, misnumbered, too many steps, a word count out of bounds) is re-drawn at once (each
sample is a chain on the engine stream), up to `max_attempts`. The bounds are shown to the model in the
prompt and enforced by the parser.

Artifacts: `attempts.jsonl` (every plan drawn and its verdict, appended durably), `plans.jsonl` (accepted:
the instruction and its parsed steps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from selflengthen.methods import agentwrite_teacher
from selflengthen.support import ui
from selflengthen.support.checks import need, rule
from selflengthen.engines.base import Request
from selflengthen.methods.agentwrite_plans import parse_plan, plan_messages, plan_prefix
from selflengthen.stages.common import RoundContext, mean, redraws, rejection_counts, resumable
from selflengthen.stages.self_instruct import NAME as INSTRUCTIONS
from selflengthen.runfolder.store import atomic_write_jsonl, open_log, read_jsonl

NAME = "plan"


@dataclass(frozen=True)
class Plan:
    """`plan:` — how plans are drawn and which ones are accepted."""

    samples: int = field(default=1, metadata=rule(ge=1))
    max_attempts: int = field(default=10, metadata=rule(ge=1))
    max_steps: int = field(default=50, metadata=rule(ge=1))
    min_words: int = field(default=200, metadata=rule(ge=1))
    max_words: int = field(default=1000, metadata=rule(ge=1))
    max_new_tokens: int = field(default=1024, metadata=rule(ge=1))
    adapter: Optional[str] = "writer"  # who plans: the method's writer (default) or null = the base model
    prefill: bool = False  # start the answer with "Paragraph 1 - Main Point:" (small models then keep the format)
    default_words: Optional[int] = field(default=None, metadata=rule(ge=1))  # count of a step line without one

    def check(self) -> None:
        need(self.min_words <= self.max_words, "plan.min_words", self.min_words,
             f"must not exceed plan.max_words={self.max_words}", "lower plan.min_words or raise plan.max_words")
        need(self.default_words is None or self.min_words <= self.default_words <= self.max_words,
             "plan.default_words", self.default_words, f"must lie in [plan.min_words, plan.max_words] = "
             f"[{self.min_words}, {self.max_words}]", "use plan.default_words=null (a step must state its count)")


@resumable(NAME)
def run(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    cfg, tpl = ctx.cfg("plan"), ctx.s.prompts["agentwrite"]
    instructions = read_jsonl(ctx.stage_dir(INSTRUCTIONS) / "instructions.jsonl")
    items = {f"{ins['id']}.s{k}": ins for ins in instructions for k in range(cfg.samples)}

    def request(item_id: str, ins: dict, attempt: int) -> Request:
        messages = plan_messages(tpl, ins["prompt"], cfg.max_steps, cfg.min_words, cfg.max_words)
        return Request.chat(item_id, messages, ctx.params(cfg.max_new_tokens, ctx.seed("plan", item_id, attempt)),
                            adapter=adapter, assistant_prefix=prefix)

    def parse(text: str):
        return parse_plan(text, cfg.max_steps, cfg.min_words, cfg.max_words, cfg.default_words)

    def judge(_ins: dict, text: str) -> tuple[bool, str]:
        result = parse(text)
        return result.ok, result.reason

    prefix = plan_prefix(tpl) if cfg.prefill else ""

    log = open_log(folder / "attempts.jsonl")
    with agentwrite_teacher.planner(ctx, cfg.adapter) as (engine, adapter), \
            ui.progress(f"round {ctx.round_no} · plan", len(items)) as advance:
        passed = redraws(log, items, request, judge, cfg.max_attempts, engine, ctx.durability, advance,
                         prepare=lambda text: (prefix + text).strip())  # the plan as the model's whole answer

    rows = []
    for item, rec in passed.items():
        if rec is None:
            continue
        steps = parse(rec["text"]).steps
        ins = items[item]
        rows.append({"id": item, "instruction_id": ins["id"], "instruction": ins["prompt"],
                     "steps": [asdict(s) for s in steps], "planned_words": sum(s.words for s in steps),
                     "attempt": rec["attempt"]})
    atomic_write_jsonl(folder / "plans.jsonl", rows)
    summary = {"items": len(items), "planned": len(rows), "plans_drawn": len(log),
               "mean_steps": mean([len(r["steps"]) for r in rows]),
               "mean_planned_words": mean([r["planned_words"] for r in rows]),
               "rejections": rejection_counts(log)}
    return summary, ["plans.jsonl"]


def brief(section: dict) -> str:
    return (f"{section.get('planned', 0)} plans of {section.get('items', 0)} ({section.get('plans_drawn', 0)} drawn), "
            f"{section.get('mean_steps', 0):.1f} steps, {section.get('mean_planned_words', 0):.0f} words planned")
