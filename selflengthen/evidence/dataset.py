"""Collection after the last round (DESIGN §1, last paragraph): the final SFT set with length control.

`python -m selflengthen collect [hydra overrides]` (same overrides as the run) does, in order:

1. `collect/01_self_instruct`: `collect.num_new` fresh instructions, made by the self-instruct stage
   itself on a virtual round after the last one (its own seeds, never a later round's);
2. `collect/02_answers`: the final generator (the last finished round's adapters) answers each once,
   with the quality filter and re-draws (`generate.max_attempts`), budget `collect.max_new_tokens`; the
   passing answers go through length-aware sampling (`sampling.a/p`, as the paper's step 1 does for them;
   `collect.sample_answers=false` keeps them all);
3. gathers every (instruction, response) pair: each round's artifacts the method names in `pairs`
   (Self-Lengthen: `initial/responses.jsonl` and `extend/extended.jsonl`, as the paper's collect_data.py
   takes both; `source` = the stage) plus the answers of step 2 (`round` = last round + 1, `source` =
   "collect"); drops duplicates (normalised instruction + response) and, as the paper, every response
   outside `collect.min_words` up to (not including) `collect.max_words` (2,000-8,000 by default);
4. adds a length constraint to every query that the response already satisfies
   (`length_control.make_constraint`, its kind drawn with the `collect.kinds` weights), phrased with a random wording of `prompts.length_control`; with
   `collect.rewrite=true` the model rewrites the query around the requirement instead (kept only if it
   contains the numbers, else the template is used);
5. exports to `export/`: `chat.jsonl` (TRL: a `messages` column), `alpaca.json` + `dataset_info.json`
   (LLaMA-Factory), `hf_dataset/` (`datasets.load_from_disk`), then `done.json` last.

Everything random is seeded from `seed` and the pair itself, so a rerun writes the same files. The
collection records what made it (`made_by`: final round, adapters by path and content, the rounds' data,
seed, model, engine, decoding, collect and self-instruct settings, prompt set, seed prompts) in
`collect/source.json`, and the export adds `collect.rewrite` in its `done.json`. A rerun with anything else
(a run that gained rounds, another seed or model, a retrained adapter) collects again and says why in a
log line; only identical settings give "complete on disk: skipped".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Optional

from selflengthen.writing import filters
from selflengthen.support import ui
from selflengthen.engines.base import Request
from selflengthen.writing.length_control import make_constraint, phrase
from selflengthen.writing.sampling import keep_indices
from selflengthen.settings import DEFAULT_KINDS, Collect, ConfigError, Settings
from selflengthen.stages import self_instruct
from selflengthen.stages.common import RoundContext, derive_seed, preparer, redraws, resumable
from selflengthen.stages.initial import answer_request, quality
from selflengthen.runfolder.store import (CorruptArtifact, StoreError, check_no_links, atomic_write_bytes, atomic_write_json, atomic_write_jsonl,
                                fsync_dir, mark_done, open_log, read_json, read_jsonl, reset_dir, stage_done)
from selflengthen.writing.text import count_words

log = logging.getLogger(__name__)

COLLECT_DIR, EXPORT_DIR = "collect", "export"
ANSWERS = "02_answers"
REWRITE = "03_rewrite"
HF_DIR = "hf_dataset"


class CollectContext(RoundContext):
    """A virtual round after the last one: stages write under `collect/`, and seeds are collect's own, so
    continuing the run later never repeats these draws."""

    @property
    def round_dir(self) -> Path:
        return self.s.run_dir / COLLECT_DIR

    def seed(self, *parts: object) -> int:
        return derive_seed(self.s.seed, "collect", *parts)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _key(instruction: str, response: str) -> str:
    return hashlib.sha256(f"{_norm(instruction)}\x00{_norm(response)}".encode()).hexdigest()[:16]


# --- 1-2: fresh instructions answered by the final generator --------------------------------------------

def final_round(run_dir: Path) -> tuple[int, dict]:
    from selflengthen.evidence.heldout import finished_rounds

    rounds = finished_rounds(run_dir)
    last = max(rounds)
    from selflengthen.runfolder import layout

    if layout.summary_path(run_dir, last + 1).exists():  # sealed, but its artifacts no longer match (logged)
        raise StoreError(f"Round {last + 1} of {run_dir} is sealed but not usable (its summary or a stage's "
                         f"artifacts no longer match their record, see the warning above), so collecting now would "
                         f"silently leave its pairs out. Fix: Run the loop again with the same overrides: it redoes "
                         f"what is damaged and what depends on it. Then collect again.")
    if last == 0:
        raise StoreError(f"{run_dir} has no finished round to collect from. Run the loop first "
                         f"(python -m selflengthen with the same overrides), then collect.")
    return last, rounds[last]


def made_by(s: Settings, cc: Collect, last: int, adapters: dict) -> dict:
    """Everything that changes the collection (steps 1-4 without the rewrite switch), as plain JSON: the final
    generator (round, adapters by path and content), the rounds' data (their stages' artifact digests), seed,
    model, engine, decoding, the collect and self-instruct settings, the prompt set and the seed prompts.
    Throughput knobs (batch size, checkpoint_every) are not in it."""
    from selflengthen.runfolder import layout
    from selflengthen.evidence.heldout import adapter_identity, sha256_json

    si = {k: v for k, v in dataclasses.asdict(s.self_instruct).items() if k != "num_new"}  # collect.num_new rules
    return {"final_round": last,
            "adapters": {role: adapter_identity(s.run_dir, a) for role, a in sorted(adapters.items())},
            "rounds_data": [_round_digest(layout.round_dir(s.run_dir, r)) for r in range(1, last + 1)],
            "seed": s.seed, "model": s.model_path, "engine": (s.engine or {}).get("name"),
            "decoding": dataclasses.asdict(s.decoding), "num_new": cc.num_new, "max_new_tokens": cc.max_new_tokens,
            "self_instruct": si, "max_attempts": s.generate.max_attempts,
            "answers": "ended by the model", "repair": s.generate.repair, "prompts_sha256": sha256_json(s.prompts),
            "seed_prompts_sha256": sha256_json(list(s.seeds))}


def _round_digest(round_dir: Path) -> str:
    """A digest of every stage artifact of a round, read from the checksums in the stages' done records (the
    stage folders' names are left out: a folder renamed by a layout migration holds the same data)."""
    from selflengthen.evidence.heldout import sha256_json

    files = []
    for done in round_dir.glob("*/done.json"):
        try:
            files.append(read_json(done).get("files", {}))
        except (CorruptArtifact, AttributeError):
            files.append(None)
    return sha256_json(sorted(files, key=lambda f: json.dumps(f, sort_keys=True)))


def _start_fresh_if_stale(run_dir: Path, source: dict) -> None:
    """The collection belongs to what made it (`made_by`): a run that gained rounds since, another seed,
    model or adapter, or a changed collect setting is collected again, never served from the old files."""
    from selflengthen.evidence.heldout import differences

    from selflengthen.runfolder.records import Lenient
    from selflengthen.runfolder.store import read_record

    marker = run_dir / COLLECT_DIR / "source.json"
    if os.path.lexists(marker):
        try:
            old = read_record(marker, Lenient)
        except CorruptArtifact as exc:
            log.warning("%s", exc)
            old = None
        if old != source:
            log.warning("the collection on disk was made with other settings (%s): collecting again",
                        differences(old, source))
            reset_dir(run_dir / COLLECT_DIR)
            reset_dir(run_dir / EXPORT_DIR)
    if not marker.exists():
        atomic_write_json(marker, source)


def answer_new_instructions(ctx: CollectContext, cc: Collect) -> list[dict]:
    """Steps 1-2; returns `{instruction, text, words}` of every passing answer."""
    if cc.num_new == 0:
        return []
    si_ctx = dataclasses.replace(ctx, s=dataclasses.replace(ctx.s, sections={
        **ctx.s.sections, "self_instruct": dataclasses.replace(ctx.s.section("self_instruct"), num_new=cc.num_new)}))
    self_instruct.run(si_ctx)
    _answer(ctx, cc)
    return read_jsonl(ctx.stage_dir(ANSWERS) / "answers.jsonl")


@resumable(ANSWERS)
def _answer(ctx: CollectContext, folder: Path, cc: Collect) -> tuple[dict, list[str]]:
    instructions = read_jsonl(ctx.stage_dir(self_instruct.NAME) / "instructions.jsonl")
    items = {ins["id"]: ins for ins in instructions}

    def request(item_id: str, ins: dict, attempt: int) -> Request:
        return answer_request(ctx, item_id, ins["prompt"], cc.max_new_tokens, ctx.seed("answer", item_id, attempt))

    attempts = open_log(folder / "attempts.jsonl")
    with ui.progress("collect · answers", len(items)) as advance:
        fcfg = filters.FilterConfig.from_dict(ctx.s.prompts["filter"])
        passed = redraws(attempts, items, request, quality(fcfg), ctx.s.generate.max_attempts, ctx.engine,
                         ctx.durability, advance,
                         prepare=preparer(ctx.s.generate, fcfg))
    rows = [{"id": i, "instruction": items[i]["prompt"], "text": rec["text"].strip(),
             "words": count_words(rec["text"].strip())} for i, rec in passed.items() if rec]
    atomic_write_jsonl(folder / "answers.jsonl", rows)
    return {"items": len(items), "passed": len(rows), "samples_drawn": len(attempts)}, ["answers.jsonl"]


# --- 3: every pair, once -------------------------------------------------------------------------------

def gather_pairs(run_dir: Path, last: int, answers: list[dict], method=None) -> list[dict]:
    """Every round's kept pairs (the method's `pairs` artifacts: Self-Lengthen's initial and extended
    answers) plus the collected answers, first occurrence of each pair kept."""
    from selflengthen.runfolder import layout
    from selflengthen.methods.base import method_of

    pairs = []
    for r in range(1, last + 1):
        for stage, artifact in (method or method_of(run_dir)).pair_sources():
            for row in read_jsonl(layout.stage_dir(run_dir, r, stage) / artifact):
                pairs.append({"instruction": row["instruction"], "response": row["text"], "round": r, "source": stage})
    pairs += [{"instruction": a["instruction"], "response": a["text"], "round": last + 1, "source": "collect"}
              for a in answers]
    seen, out = set(), []
    for p in pairs:
        p["instruction"], p["response"] = p["instruction"].strip(), p["response"].strip()
        key = _key(p["instruction"], p["response"])
        if key not in seen and p["instruction"] and count_words(p["response"]) > 0:
            seen.add(key)
            out.append({**p, "id": key, "words": count_words(p["response"])})
    return out


# --- 4: length control ------------------------------------------------------------------------------------

def in_range(pairs: list[dict], cc) -> list[dict]:
    """The pairs whose response has min_words up to (not including) max_words words (the paper: 2,000-8,000)."""
    return [p for p in pairs if cc.min_words <= p["words"] and (cc.max_words is None or p["words"] < cc.max_words)]


def sample_answers(ctx: RoundContext, answers: list[dict]) -> list[dict]:
    """Length-aware sampling of the fresh answers (`sampling.a/p`, by characters as the rounds' stages)."""
    sampling = _sampling(ctx.s)
    keep = keep_indices([len(a["text"]) for a in answers], sampling.a, sampling.p,
                        random.Random(ctx.seed("answers-sampling")))
    return [answers[k] for k in keep]


def _sampling(s: Settings):
    """The run's `sampling:` section, or its defaults for a method without one."""
    from selflengthen.writing.sampling import Sampling

    return s.sections.get("sampling") or Sampling()


def add_length_control(s: Settings, pairs: list[dict], kinds: Optional[Mapping[str, float]] = None) -> list[dict]:
    """A constraint each response satisfies, phrased into its query; its kind drawn with the `kinds` weights
    (the paper's by default). Seeded by the pair, not its position."""
    templates = s.prompts["length_control"]
    out = []
    for p in pairs:
        rng = random.Random(derive_seed(s.seed, "length-control", p["id"]))
        c = make_constraint(p["words"], rng, dict(kinds or DEFAULT_KINDS))
        wording = phrase("", c, {**templates, "join": "{constraint}"}, rng)
        query = templates["join"].format(query=p["instruction"], constraint=wording)
        out.append({**p, "constraint": {**c.to_dict(), "text": wording}, "query": query, "rewritten": False})
    return out


def _numbers(c: dict) -> list[str]:
    return [str(c["low"]), str(c["high"])] if c["type"] == "range" else [str(c["target"])]


def rewrite_queries(ctx: CollectContext, rows: list[dict]) -> list[dict]:
    """`collect.rewrite=true`: the model (the self-instruct role, base model by default) rewrites each query
    around its requirement; a rewrite that lost the numbers is re-drawn once, then the template is kept."""
    tpl = ctx.s.prompts["length_control"]["rewrite"]
    items = {r["id"]: r for r in rows}

    def request(item_id: str, row: dict, attempt: int) -> Request:
        text = tpl.format(query=row["instruction"], constraint=row["constraint"]["text"])
        budget = min(512, 4 * count_words(row["query"]) + 64)  # a query, not an essay
        return Request.chat(item_id, ctx.messages(None, text), ctx.params(budget, ctx.seed("rewrite", item_id, attempt)),
                            adapter=ctx.s.self_instruct.adapter)

    def judge(row: dict, text: str) -> tuple[bool, str]:
        text = text.strip().strip('"“”')
        if not text:
            return False, "empty"
        if not all(n in text for n in _numbers(row["constraint"])):
            return False, "lost_the_number"
        return True, ""

    folder = ctx.stage_dir(REWRITE)
    attempts = open_log(folder / "attempts.jsonl")
    with ui.progress("collect · rewrite queries", len(items)) as advance:
        passed = redraws(attempts, items, request, judge, 2, ctx.engine, ctx.durability, advance)
    out = []
    for r in rows:
        rec = passed.get(r["id"])
        out.append({**r, "query": rec["text"].strip().strip('"“”'), "rewritten": True} if rec else r)
    return out


# --- 5: export ----------------------------------------------------------------------------------------

def _chat_row(r: dict) -> dict:
    return {"messages": [{"role": "user", "content": r["query"]}, {"role": "assistant", "content": r["response"]}],
            "constraint": r["constraint"], "words": r["words"], "round": r["round"], "source": r["source"],
            "instruction": r["instruction"], "rewritten": r["rewritten"]}


def _alpaca_row(r: dict) -> dict:
    return {"instruction": r["query"], "input": "", "output": r["response"], "constraint": r["constraint"],
            "words": r["words"], "round": r["round"], "source": r["source"]}


def _flat_row(r: dict) -> dict:
    c = r["constraint"]
    return {"messages": _chat_row(r)["messages"], "constraint_type": c["type"], "constraint_target": c.get("target"),
            "constraint_low": c.get("low"), "constraint_high": c.get("high"), "constraint_text": c["text"],
            "words": r["words"], "round": r["round"], "source": r["source"], "instruction": r["instruction"]}


DATASET_INFO = {  # LLaMA-Factory: dataset_dir=<this folder>, dataset=selflengthen (or selflengthen_chat)
    "selflengthen": {"file_name": "alpaca.json",
                     "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
    "selflengthen_chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
                          "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                   "assistant_tag": "assistant"}},
}


def export(rows: list[dict], folder: Path, info: dict) -> dict:
    """Write the three formats atomically, then `done.json`."""
    import datasets

    check_no_links(folder / "done.json")  # a linked export/ (or done.json) is refused before anything changes
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "done.json").unlink(missing_ok=True)  # being rewritten: not done until the end
    atomic_write_jsonl(folder / "chat.jsonl", [_chat_row(r) for r in rows])
    atomic_write_bytes(folder / "alpaca.json",
                       (json.dumps([_alpaca_row(r) for r in rows], ensure_ascii=False, indent=1) + "\n").encode())
    atomic_write_json(folder / "dataset_info.json", DATASET_INFO)
    # save_to_disk writes several files: build the folder aside, then swap it in
    tmp = folder / f".{HF_DIR}.tmp"
    reset_dir(tmp)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the save takes a blink: no tqdm bar between our rich ones
    try:
        datasets.Dataset.from_list([_flat_row(r) for r in rows]).save_to_disk(str(tmp))
    finally:
        if bars:
            datasets.enable_progress_bars()
    reset_dir(folder / HF_DIR)
    tmp.rename(folder / HF_DIR)
    fsync_dir(folder)
    hf_files = sorted(str(p.relative_to(folder)) for p in (folder / HF_DIR).rglob("*") if p.is_file())
    return mark_done(folder, ["chat.jsonl", "alpaca.json", "dataset_info.json", *hf_files], summary=info)


def collect(s: Settings, cc: Collect, engine) -> dict:
    """Steps 1-5 for the run in `s.run_dir`; returns the export summary. The caller owns the engine."""
    last, adapters = final_round(s.run_dir)
    source = made_by(s, cc, last, adapters)
    _start_fresh_if_stale(s.run_dir, source)
    # the export's key: the collection's plus the phrasing step and which artifacts of the rounds it takes
    key = {**source, "rewrite": cc.rewrite, "pairs": [list(p) for p in s.method.pair_sources()],
           "final_data": {"min_words": cc.min_words, "max_words": cc.max_words, "kinds": dict(cc.kinds),
                          "sample_answers": cc.sample_answers,
                          "sampling": dataclasses.asdict(_sampling(s)) if cc.sample_answers else None}}
    done = stage_done(s.run_dir / EXPORT_DIR)
    if done and done["summary"].get("made_by") == key:
        log.info("export is complete on disk: skipped")
        return done["summary"]
    if done:
        from selflengthen.evidence.heldout import differences

        log.warning("the export on disk was made with other settings (%s): exporting again",
                    differences(done["summary"].get("made_by"), key))
    start = time.time()
    engine.set_adapters(adapters)
    ctx = CollectContext(s, last + 1, engine, adapters)
    answers = answer_new_instructions(ctx, cc)
    fresh = len(answers)
    if cc.sample_answers:
        answers = sample_answers(ctx, answers)
    gathered = gather_pairs(s.run_dir, last, answers)
    pairs = in_range(gathered, cc)
    if gathered and not pairs:
        words = sorted(p["words"] for p in gathered)
        raise ConfigError(
            f"Config error: collect.min_words={cc.min_words}, collect.max_words={cc.max_words} — none of the "
            f"{len(gathered)} pairs has a length in that range (theirs run from {words[0]} to {words[-1]} words), so "
            f"the final data would be empty. Fix: scale the range to this run's budgets, e.g. "
            f"collect.min_words={words[len(words) // 4]} collect.max_words=null (the paper's 2,000-8,000 words "
            f"needs budgets of ~16k tokens). The fresh answers are stored and are used again, not regenerated.")
    rows = add_length_control(s, pairs, cc.kinds)
    if cc.rewrite:
        rows = rewrite_queries(ctx, rows)
    kinds = dict(Counter(r["constraint"]["type"] for r in rows))
    sources = dict(Counter(r["source"] for r in rows))
    info = {"rows": len(rows), "final_round": last, "from_rounds": sum(r["source"] != "collect" for r in rows),
            "from_collect": sources.get("collect", 0), "sources": sources, "kinds": kinds,
            "rewritten": sum(r["rewritten"] for r in rows), "config": dataclasses.asdict(cc),
            "answers_sampled_out": fresh - len(answers), "out_of_range": len(gathered) - len(pairs),
            "made_by": key, "seconds": time.time() - start}
    return export(rows, s.run_dir / EXPORT_DIR, info)["summary"]

