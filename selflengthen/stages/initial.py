"""initial: the generator answers every new instruction, k samples each (DESIGN §1.2).

Every sample is a chain of its own on the engine stream: one that fails the quality filter is re-drawn at
once, up to `max_attempts`; then length-aware sampling keeps mostly the longer passing answers.

Artifacts: `attempts.jsonl` (every sample and its verdict, appended durably), `responses.jsonl` (kept).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from selflengthen.writing import filters
from selflengthen.support import ui
from selflengthen.support.checks import rule
from selflengthen.engines.base import Request
from selflengthen.writing.sampling import keep_indices
from selflengthen.stages.common import RoundContext, mean, preparer, redraws, rejection_counts, resumable
from selflengthen.stages.self_instruct import NAME as INSTRUCTIONS
from selflengthen.runfolder.store import atomic_write_jsonl, open_log, read_jsonl
from selflengthen.writing.text import count_words

NAME = "initial"


@dataclass(frozen=True)
class Generate:
    """`generate:` — initial responses."""

    samples: int = field(default=2, metadata=rule(ge=1))
    max_attempts: int = field(default=20, metadata=rule(ge=1))
    max_new_tokens: int = field(default=2048, metadata=rule(ge=1))
    repair: bool = False  # cut chatter lines naming a meta-word off the edges before the filter (filters.repair)


def quality(cfg: filters.FilterConfig):
    def judge(_item: dict, text: str) -> tuple[bool, str]:
        result = filters.check(text.strip(), cfg)
        return result.ok, result.reason
    return judge


def answer_request(ctx: RoundContext, item_id: str, instruction: str, max_new_tokens: int, seed: int) -> Request:
    """The generator's answer to one instruction (`prompts.generate`): what this stage sends, and what
    collect's fresh answers send (evidence/dataset.py)."""
    tpl = ctx.s.prompts["generate"]
    messages = ctx.messages(tpl.get("system"), tpl["user"].format(instruction=instruction))
    return Request.chat(item_id, messages, ctx.params(max_new_tokens, seed, stop=tpl.get("stop") or ()),
                        adapter="generator")

@resumable(NAME)
def run(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    cfg = ctx.cfg("generate")
    instructions = read_jsonl(ctx.stage_dir(INSTRUCTIONS) / "instructions.jsonl")
    items = {f"{ins['id']}.s{k}": ins for ins in instructions for k in range(cfg.samples)}

    def request(item_id: str, ins: dict, attempt: int) -> Request:
        return answer_request(ctx, item_id, ins["prompt"], cfg.max_new_tokens, ctx.seed("initial", item_id, attempt))

    log = open_log(folder / "attempts.jsonl")
    ahead = ctx.handover_out  # the next stage may start on passing answers before this stage ends

    def offer(item: str, rec: dict) -> None:
        row = response_row(item, items[item], rec)
        ahead.offer(row, priority=row["chars"])  # the longest first: length-aware sampling keeps them

    with ui.progress(f"round {ctx.round_no} · initial responses", len(items)) as advance:
        fcfg = filters.FilterConfig.from_dict(ctx.s.prompts["filter"])
        passed = redraws(log, items, request, quality(fcfg), cfg.max_attempts, ctx.engine, ctx.durability, advance,
                         prepare=preparer(cfg, fcfg), on_pass=offer if ahead else None, ahead=ahead)

    ok = [response_row(i, items[i], rec) for i, rec in passed.items() if rec]
    sampling = ctx.cfg("sampling")
    keep = keep_indices([r["chars"] for r in ok], sampling.a, sampling.p, random.Random(ctx.seed("initial-sampling")))
    rows = [ok[k] for k in keep]
    atomic_write_jsonl(folder / "responses.jsonl", rows)
    summary = {"items": len(items), "passed": len(ok), "kept": len(rows),
               "mean_words": mean([r["words"] for r in rows]),
               "passed_mean_words": mean([r["words"] for r in ok]),
               "samples_drawn": len(log), "rejections": rejection_counts(log)}
    return summary, ["responses.jsonl"]


def response_row(item: str, ins: dict, rec: dict) -> dict:
    """An item's passing record as a row of `responses.jsonl` (what the extension stage starts from)."""
    text = rec["text"].strip()
    return {"id": item, "instruction_id": ins["id"], "instruction": ins["prompt"], "text": text,
            "words": count_words(text), "chars": len(text), "attempt": rec["attempt"]}


def brief(section: dict) -> str:
    return f"{section.get('kept', 0)} kept of {section.get('items', 0)}, {section.get('mean_words', 0):.0f} words avg"
