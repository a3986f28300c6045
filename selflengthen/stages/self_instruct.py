"""self_instruct: grow the instruction pool (DESIGN §1.1).

As in the paper, the model is asked in a chat turn (`prompts.self_instruct.task`) to construct instructions for
long texts, and its answer is opened with two instructions sampled from the pool as a numbered list; it
writes the third, and the whole stripped completion is the candidate (`first_line: true` keeps only its first
line; `task: null` sends the numbered list as a bare completion instead); a chat-mode yes/no judge decides whether it suits a long article; it is kept if the judge says yes,
its length is within the word bounds and it is not already in the pool. Waves of `per_wave` proposals
run until `num_new` are kept or `max_waves` is reached; inside a wave every proposal streams on its own
(its judge is queued as soon as the proposal is back), and the kept instructions are the first `num_new`
in proposal order, so finishing order never changes the result. If the waves end short and `fill_from_pool` is on,
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

from selflengthen.support import ui
from selflengthen.engines.base import Completion, Request
from selflengthen.runfolder import layout
from selflengthen.support.checks import rule
from selflengthen.stages.common import UNFINISHED, Journal, RoundContext, Scheduler, rejection_counts, resumable
from selflengthen.runfolder.store import atomic_write_jsonl, open_log, read_jsonl
from selflengthen.writing.text import count_words

NAME = "self_instruct"


@dataclass(frozen=True)
class SelfInstruct:
    """`self_instruct:` in selflengthen/conf/config.yaml."""

    num_new: int = field(default=64, metadata=rule(ge=1))
    per_wave: int = field(default=128, metadata=rule(ge=1))
    max_waves: int = field(default=5, metadata=rule(ge=1))
    adapter: Optional[str] = None  # None = the base model (paper), or an adapter name of the method
    min_words: int = field(default=3, metadata=rule(ge=0))
    max_words: int = field(default=500, metadata=rule(ge=1))
    # the paper leaves it at 16,384 and relies on its stops; 1,024 tokens is past max_words=500 words (~700
    # tokens). A proposal the budget cuts is rejected as `unfinished`, never kept half-written
    max_new_tokens: int = field(default=1024, metadata=rule(ge=1))
    fill_from_pool: bool = True
    first_line: bool = False  # true: keep only the first line of a completion (not in the paper; small budgets)

    def check(self) -> None:
        if self.min_words >= self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must be below max_words ({self.max_words}). "
                             f"Fix: use the paper's 3 and 500")
_LEAD = re.compile(r"^\s*(?:instruction\s*\d*\s*[:：.]|指令\s*\d*\s*[:：.]|\d+\s*[.:：)])\s*", re.IGNORECASE)


def parse_instruction(completion: str, first_line: bool = False) -> str:
    """The third instruction: the whole stripped completion (the paper), or with `first_line` the first
    non-empty line, without a numbering prefix or wrapping quotes."""
    if not first_line:
        return completion.strip()
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
    log = open_log(folder / "candidates.jsonl")

    with ui.progress(f"round {ctx.round_no} · self-instruct", cfg.num_new) as advance:
        advance(sum(r["ok"] for r in log.records))
        for wave in range(cfg.max_waves):
            ids = [f"w{wave:02d}.{j:05d}" for j in range(cfg.per_wave)]
            # a wave a crash cut short is finished first, as the uninterrupted run finished it: its records
            # land in completion order, so enough kept ones on disk does not mean its earlier ids were decided
            if sum(r["ok"] for r in log.records) >= cfg.num_new and not any(i in log for i in ids):
                break
            if any(i not in log for i in ids):
                _wave(ctx, log, ids, pool, tpl, advance)

    kept = [r["text"] for r in sorted(log.records, key=_order) if r["ok"]][:cfg.num_new]
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


def _order(record: dict) -> tuple[int, int]:
    """Proposal order, whatever order the stream finished them in: `w<wave>.<n>`."""
    wave, n = record["id"][1:].split(".")
    return int(wave), int(n)


def _wave(ctx: RoundContext, log, ids: list[str], pool: list[str], tpl: dict, advance) -> None:
    """One wave of proposals on one stream: each proposal is judged the moment it can be, and the yes/no
    judge of a fresh one is queued at once. Whether a proposal is a duplicate is decided in id order (a
    proposal is held until every earlier one of its wave is back), so the choice never depends on which
    finished first: a duplicate repeats the pool, a kept instruction of an earlier wave, or an earlier
    proposal of this wave that had the right length and was no duplicate itself."""
    cfg = ctx.cfg("self_instruct")
    done_before = {r["id"] for r in log.records}
    seen = {_norm(p) for p in pool} | {_norm(r["text"]) for r in log.records if r["ok"] and r["id"] not in ids}
    back: dict[str, str] = {}  # proposal id -> parsed instruction, until its turn comes
    cut: set[str] = set()  # ids of the proposals the token budget cut
    head = 0
    yes = tuple(w.lower() for w in tpl.get("judge_yes", ["yes"]))
    sched = Scheduler(ctx.engine)

    with Journal(log, ctx.durability) as journal:
        def judged(record: dict, answer: Completion) -> None:
            record["judge"] = answer.text.strip()
            record["ok"] = record["judge"].lower().startswith(yes)
            record["reason"] = "" if record["ok"] else "judged_not_long_form"
            journal.add([record])
            advance(int(record["ok"]))

        def release() -> None:
            """Decide every proposal whose earlier ones are all decided."""
            nonlocal head
            while head < len(ids) and (ids[head] in done_before or ids[head] in back):
                i = ids[head]
                head += 1
                if i in done_before:  # decided before a restart
                    r = log.by_id[i]
                    if r["reason"] in ("", "judged_not_long_form"):
                        seen.add(_norm(r["text"]))
                    continue
                text = back.pop(i)
                words = count_words(text)
                reason = ""
                if i in cut:  # the budget ended it, not the model: half an instruction is no instruction
                    reason = UNFINISHED
                elif not cfg.min_words < words < cfg.max_words:
                    reason = "instruction_length"
                elif _norm(text) in seen:
                    reason = "duplicate_instruction"
                record = {"id": i, "text": text, "words": words, "ok": False, "reason": reason}
                if reason:
                    journal.add([record])
                    continue
                seen.add(_norm(text))
                params = ctx.params(4, ctx.seed("si-judge", i))  # yes/no needs few tokens
                sched.submit(Request.chat(i, ctx.messages(None, tpl["judge"].format(instruction=text)), params,
                                          adapter=cfg.adapter), lambda c, record=record: judged(record, c), next_step=True)

        def proposed(c: Completion) -> None:
            back[c.id] = parse_instruction(c.text, cfg.first_line)
            # cut by the budget: unfinished, unless only its first line is kept and the model ended that line
            if c.finish_reason == "length" and not (cfg.first_line and "\n" in c.text.strip()):
                cut.add(c.id)
            release()

        for i in ids:
            if i in done_before:
                continue
            a, b = random.Random(ctx.seed("si-pick", i)).sample(pool, 2)
            params = ctx.params(cfg.max_new_tokens, ctx.seed("si-gen", i), stop=tpl.get("stop") or ())
            sched.submit(proposal(i, tpl, a, b, params, cfg.adapter), proposed)
        release()
        sched.run()


def proposal(i: str, tpl: dict, a: str, b: str, params, adapter: Optional[str]) -> Request:
    """The paper's framing: a chat turn with the task, the answer opened with the numbered list (`fewshot`);
    without a `task`, the numbered list as a bare completion."""
    listing = tpl["fewshot"].format(ins1=a, ins2=b)
    if tpl.get("task"):
        return Request.chat(i, [("user", tpl["task"])], params, adapter=adapter, assistant_prefix=listing)
    return Request.completion(i, listing, params, adapter=adapter)


def brief(section: dict) -> str:
    pool = f" ({section['from_pool']} from the pool)" if section.get("from_pool") else ""
    return f"{section.get('instructions', 0)} instructions{pool}"
