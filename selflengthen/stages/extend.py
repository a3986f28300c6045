"""extend: two-stage extension of every kept initial response (DESIGN §1.3).

One pass over a text T:
  stage 1 — the extender (chat) rewrites the first half of T's paragraphs longer; the first two thirds of
            the paragraphs it returns are kept (its tail is usually a rushed ending);
  stage 2 — the extender is asked to extend the whole T, with the stage-1 text already placed as the start
            of its answer, and continues from there;
  the candidate (stage-1 text + continuation) becomes the new T if it passes the filter and is longer
  than the best so far.
An attempt runs `passes` passes and succeeds if the best text is more than `min_growth` × the initial
length (in words); a failed attempt is re-drawn, up to `max_attempts`. Every sample is a chain on the
engine stream (DESIGN §6): its stage-2 request is queued the moment its stage-1 text is back, its next
pass the moment a pass is judged, its re-drawn attempt the moment an attempt fails — no sample waits for
another.

Artifacts: `passes.jsonl` (one record per item, attempt and pass, plus one per finished attempt),
`extended.jsonl` (kept after length-aware sampling).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from selflengthen.writing import filters
from selflengthen.support import ui
from selflengthen.support.checks import rule
from selflengthen.engines.base import Request
from selflengthen.writing.sampling import keep_indices
from selflengthen.stages.common import UNFINISHED, Attempts, Chain, RoundContext, mean, preparer, resumable, run_chains
from selflengthen.stages.initial import NAME as INITIAL
from selflengthen.runfolder.store import ItemLog, atomic_write_jsonl, open_log, read_jsonl
from selflengthen.writing.text import count_words, split_paragraphs

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
    repair: bool = False  # cut chatter lines naming a meta-word off the edges before the filter (filters.repair)


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

    def take(self, r: dict) -> None:
        """Advance past one of this item's records (a pass, or an attempt's verdict)."""
        if r.get("final"):
            if r["ok"]:
                self.done = r
            else:
                self.failed_attempts += 1
            self.attempt, self.next_pass = r["attempt"] + 1, 1
            self.text, self.words = self.source["text"], self.source["words"]
        elif r["attempt"] == self.attempt:
            self.next_pass, self.text, self.words = r["pass"] + 1, r["text"], r["words"]


def rebuild(items: dict[str, dict], log: ItemLog) -> dict[str, ItemState]:
    states = {i: ItemState(i, src, text=src["text"], words=src["words"]) for i, src in items.items()}
    for r in log.records:  # one item's records are in append order: later passes overwrite earlier ones
        if r["item"] in states:  # a record of an item this round does not have (a hand-edited log) is not used
            states[r["item"]].take(r)
    return states


@resumable(NAME)
def run(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    cfg = ctx.cfg("extend")
    fcfg = filters.FilterConfig.from_dict(ctx.s.prompts["filter"])
    initial = read_jsonl(ctx.stage_dir(INITIAL) / "responses.jsonl")
    items = {f"{row['id']}.e{k}": row for row in initial for k in range(cfg.samples)}
    log = open_log(folder / "passes.jsonl")

    with ui.progress(f"round {ctx.round_no} · extension", len(items)) as advance:
        states = rebuild(items, log)
        active = [st for st in states.values() if not st.done and st.failed_attempts < cfg.max_attempts]
        advance(len(items) - len(active))
        # the longest texts first: their chains are the longest (every pass rewrites the whole text), and a
        # long chain started last is what a stage's end would wait for
        active.sort(key=lambda st: -st.words)
        run_chains(ctx.engine, log, (sample(ctx, st, fcfg) for st in active), ctx.durability, advance,
                   takes=ctx.handover_in)

    return _finish(ctx, folder, items, rebuild(items, log), log)


def sample(ctx: RoundContext, st: ItemState, fcfg: filters.FilterConfig) -> Attempts:
    """One extension sample as independent attempts (each from the initial text, seeded by its number): an
    attempt is a chain of stage 1, stage 2 and the judge, pass after pass, ending with its verdict. `st` is
    where the log left the sample; its current attempt continues from there."""
    cfg = ctx.cfg("extend")

    def make(k: int) -> Chain:
        at = st if k == st.attempt else ItemState(st.item, st.source, attempt=k, text=st.source["text"],
                                                  words=st.source["words"])
        return attempt(ctx, at, fcfg)

    # an attempt's passes each rewrite the whole text: its length says how long the attempt runs
    return Attempts(st.item, st.attempt, cfg.max_attempts, make, source=st.source if st.next_pass == 1 else None,
                    weight=max(1, st.source["words"]))


def ahead(ctx: RoundContext) -> Optional[Callable[[dict], list[Attempts]]]:
    """Extension samples of an initial answer, to start before the initial stage ends (`Handover`): row ->
    its samples, as this stage makes them on an empty log. None when this stage has begun already."""
    folder = ctx.stage_dir(NAME)
    if (folder / "passes.jsonl").exists() or (folder / "done.json").exists():
        return None
    cfg = ctx.cfg("extend")
    fcfg = filters.FilterConfig.from_dict(ctx.s.prompts["filter"])

    def make(row: dict) -> list[Attempts]:
        return [sample(ctx, ItemState(f"{row['id']}.e{k}", row, text=row["text"], words=row["words"]), fcfg)
                for k in range(cfg.samples)]
    return make


def attempt(ctx: RoundContext, st: ItemState, fcfg: filters.FilterConfig) -> Chain:
    """The passes of one attempt; returns whether it grew the text enough."""
    cfg, tpl = ctx.cfg("extend"), ctx.s.prompts["extend"]
    prepare = preparer(cfg, fcfg)

    def request(stage: str, template: str, text: str, prefix: str = "") -> Request:
        messages = ctx.messages(tpl.get("system"), template.format(instruction=st.source["instruction"], text=text))
        params = ctx.params(cfg.max_new_tokens, ctx.seed(stage, st.item, st.attempt, st.next_pass),
                            stop=tpl.get("stop") or ())
        return Request.chat(st.item, messages, params, adapter="extender", assistant_prefix=prefix)

    while True:
        stage1 = yield request("extend-1", tpl["stage1"], first_half(st.text))
        prefix = keep_two_thirds(stage1.text.strip())  # its tail is cut by design: stage 2 writes the end
        candidate, finish = None, None
        if prefix:
            stage2 = yield request("extend-2", tpl["stage2"], st.text, prefix + "\n\n")
            candidate, finish = prepare(prefix + "\n\n" + stage2.text.strip()), stage2.finish_reason
        records = [judge_pass(st, candidate, fcfg, finish)]
        st.take(records[0])
        if records[0]["pass"] >= cfg.passes:
            ok = st.words > cfg.min_growth * st.source["words"]
            records.append({"id": f"{st.item}#a{st.attempt}", "item": st.item, "attempt": st.attempt, "final": True,
                            "ok": ok, "reason": "" if ok else "too_little_growth", "text": st.text,
                            "words": st.words})
            yield records  # a pass and its attempt's verdict reach the log together
            return ok
        yield records


def judge_pass(st: ItemState, candidate: Optional[str], fcfg: filters.FilterConfig,
               finish: Optional[str] = "stop") -> dict:
    """The pass record: the candidate becomes the new text if stage 2 ended it itself (not the token budget:
    `unfinished`), it passes the filter and it is longer."""
    reason, text, words = "", st.text, st.words
    if candidate is None:
        reason = "empty_stage1"
    elif finish == "length":
        reason = UNFINISHED
    else:
        result = filters.check(candidate, fcfg)
        n = count_words(candidate)
        if not result.ok:
            reason = result.reason
        elif n <= st.words:
            reason = "not_longer"
        else:
            text, words = candidate, n
    return {"id": f"{st.item}#a{st.attempt}p{st.next_pass}", "item": st.item, "attempt": st.attempt,
            "pass": st.next_pass, "accepted": not reason, "reason": reason, "text": text, "words": words,
            "finish": finish}


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
