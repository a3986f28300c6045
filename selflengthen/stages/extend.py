"""extend: two-stage extension of every kept initial response (DESIGN §1.3).

One pass over a text T:
  stage 1 — the extender (chat) rewrites the first half of T's paragraphs longer; the first two thirds of
            the paragraphs it returns are kept (its tail is usually a rushed ending);
  stage 2 — the extender is asked to extend the whole T, with the stage-1 text already placed as the start
            of its answer, and continues from there;
  the candidate (stage-1 text + continuation) becomes the new T if it passes the filter and is longer
  than the best so far.
An attempt runs `passes` passes and succeeds if the best text is more than `min_growth` × the initial
length (in words); a failed attempt is re-drawn, up to `max_attempts`. Every pass of every pending item
runs as one wave per stage (all stage-1 requests together, then all stage-2), in durable chunks.

Artifacts: `passes.jsonl` (one record per item, attempt and pass, plus one per finished attempt),
`extended.jsonl` (kept after length-aware sampling).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from selflengthen import filters, ui
from selflengthen.config import rule
from selflengthen.engines.base import Request
from selflengthen.sampling import keep_indices
from selflengthen.stages.common import RoundContext, mean, preparer, resumable
from selflengthen.stages.initial import NAME as INITIAL
from selflengthen.store import ItemLog, atomic_write_jsonl, iter_chunks, open_log, read_jsonl
from selflengthen.text import count_words, split_paragraphs

NAME = "extend"


@dataclass(frozen=True)
class Extend:
    """`extend:` — two-stage extension."""

    samples: int = field(default=2, metadata=rule(ge=1))
    passes: int = field(default=3, metadata=rule(ge=1))
    # below 1 an unchanged answer would count as "extended": the paper's 1.2 asks for 20% more words
    min_growth: float = field(default=1.2, metadata=rule(ge=1.0, fix="use the paper's extend.min_growth=1.2"))
    max_attempts: int = field(default=20, metadata=rule(ge=1))
    max_new_tokens: int = field(default=4096, metadata=rule(ge=1))
    trim_to_sentence: bool = False


def first_half(text: str) -> str:
    """The first half of T's paragraphs (rounded up, at least one), joined as they were."""
    paras, sep = split_paragraphs(text)
    return sep.join(paras[:max(1, (len(paras) + 1) // 2)])


def keep_two_thirds(text: str) -> str:
    """The first two thirds of the paragraphs the extender returned (rounded down, at least one)."""
    paras, sep = split_paragraphs(text)
    return sep.join(paras[:max(1, (2 * len(paras)) // 3)]) if paras else ""


@dataclass
class ItemState:
    """Where one extension sample stands, rebuilt from the log alone."""

    item: str
    source: dict  # the initial response row
    attempt: int = 0
    next_pass: int = 1
    text: str = ""
    words: int = 0
    done: Optional[dict] = None  # the successful final record, once there is one
    failed_attempts: int = 0


def rebuild(items: dict[str, dict], log: ItemLog) -> dict[str, ItemState]:
    states = {i: ItemState(i, src, text=src["text"], words=src["words"]) for i, src in items.items()}
    for r in log.records:  # records are in append order: later passes overwrite earlier ones
        st = states[r["item"]]
        if r.get("final"):
            if r["ok"]:
                st.done = r
            else:
                st.failed_attempts += 1
            st.attempt, st.next_pass = r["attempt"] + 1, 1
            st.text, st.words = st.source["text"], st.source["words"]
        elif r["attempt"] == st.attempt:
            st.next_pass, st.text, st.words = r["pass"] + 1, r["text"], r["words"]
    return states


@resumable(NAME)
def run(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    cfg = ctx.cfg("extend")
    fcfg = filters.FilterConfig.from_dict(ctx.s.prompts["filter"])
    initial = read_jsonl(ctx.stage_dir(INITIAL) / "responses.jsonl")
    items = {f"{row['id']}.e{k}": row for row in initial for k in range(cfg.samples)}
    log = open_log(folder / "passes.jsonl")

    with ui.progress(f"round {ctx.round_no} · extension", len(items)) as advance:
        settled = 0
        while True:
            states = rebuild(items, log)
            now_settled = sum(1 for s in states.values() if s.done or s.failed_attempts >= cfg.max_attempts)
            advance(now_settled - settled)
            settled = now_settled
            active = [s for s in states.values() if not s.done and s.failed_attempts < cfg.max_attempts]
            if not active:
                break
            for part in iter_chunks(active, ctx.s.checkpoint_every):
                log.append(one_pass(ctx, part, fcfg))

    return _finish(ctx, folder, items, rebuild(items, log), log)


def one_pass(ctx: RoundContext, states: list[ItemState], fcfg: filters.FilterConfig) -> list[dict]:
    """Run the next pass of every given item: one stage-1 wave, one stage-2 wave. Returns log records."""
    cfg, tpl = ctx.cfg("extend"), ctx.s.prompts["extend"]

    def msgs(template: str, st: ItemState, text: str):
        return ctx.messages(tpl.get("system"), template.format(instruction=st.source["instruction"], text=text))

    def seed(stage: str, st: ItemState) -> int:
        return ctx.seed(stage, st.item, st.attempt, st.next_pass)

    stage1 = ctx.engine.generate([
        Request.chat(st.item, msgs(tpl["stage1"], st, first_half(st.text)),
                     ctx.params(cfg.max_new_tokens, seed("extend-1", st)), adapter="extender") for st in states])
    prefixes = [keep_two_thirds(t.strip()) for t in stage1]
    go = [(st, p) for st, p in zip(states, prefixes) if p]
    stage2 = ctx.engine.generate([
        Request.chat(st.item, msgs(tpl["stage2"], st, st.text),
                     ctx.params(cfg.max_new_tokens, seed("extend-2", st)), adapter="extender",
                     assistant_prefix=p + "\n\n") for st, p in go])
    prepare = preparer(cfg.trim_to_sentence)
    candidates = {st.item: prepare(p + "\n\n" + cont.strip()) for (st, p), cont in zip(go, stage2)}

    records = []
    for st in states:
        cand = candidates.get(st.item)
        reason, accepted = "", False
        if cand is None:
            reason = "empty_stage1"
        else:
            result = filters.check(cand, fcfg)
            words = count_words(cand)
            if not result.ok:
                reason = result.reason
            elif words <= st.words:
                reason = "not_longer"
            else:
                accepted, st.text, st.words = True, cand, words
        records.append({"id": f"{st.item}#a{st.attempt}p{st.next_pass}", "item": st.item, "attempt": st.attempt,
                        "pass": st.next_pass, "accepted": accepted, "reason": reason, "text": st.text,
                        "words": st.words})
        if st.next_pass >= cfg.passes:
            ok = st.words > cfg.min_growth * st.source["words"]
            records.append({"id": f"{st.item}#a{st.attempt}", "item": st.item, "attempt": st.attempt, "final": True,
                            "ok": ok, "reason": "" if ok else "too_little_growth", "text": st.text,
                            "words": st.words})
    return records


def _requests(log: ItemLog) -> int:
    """Generations the stage made: a stage-1 call per pass, and a stage-2 call unless stage 1 came back empty."""
    passes = [r for r in log.records if not r.get("final")]
    return len(passes) + sum(1 for r in passes if r["reason"] != "empty_stage1")


def _finish(ctx: RoundContext, folder: Path, items: dict, states: dict[str, ItemState],
            log: ItemLog) -> tuple[dict, list[str]]:
    ok = [s for s in states.values() if s.done]
    texts = [s.done["text"] for s in ok]
    sampling = ctx.cfg("sampling")
    keep = keep_indices([len(t) for t in texts], sampling.a, sampling.p,
                        random.Random(ctx.seed("extend-sampling")))
    rows = []
    for k in keep:
        st = ok[k]
        rows.append({"id": st.item, "initial_id": st.source["id"], "instruction": st.source["instruction"],
                     "initial": st.source["text"], "initial_words": st.source["words"], "text": texts[k],
                     "words": st.done["words"], "chars": len(texts[k]),
                     "growth": st.done["words"] / max(1, st.source["words"])})
    atomic_write_jsonl(folder / "extended.jsonl", rows)
    rejections = Counter(r["reason"] for r in log.records if r["reason"])
    summary = {"items": len(items), "passed": len(ok), "kept": len(rows), "mean_words": mean([r["words"] for r in rows]),
               "mean_growth": mean([r["growth"] for r in rows]), "requests": _requests(log),
               "rejections": dict(rejections)}
    return summary, ["extended.jsonl"]


def brief(section: dict) -> str:
    return (f"{section.get('kept', 0)} kept of {section.get('items', 0)}, {section.get('mean_words', 0):.0f} words avg, "
            f"{section.get('mean_growth', 0):.2f}x growth")
