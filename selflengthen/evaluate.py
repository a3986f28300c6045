"""Held-out evaluation: how long, how well-formed and how close to the asked length each round's generator writes.

Round 0 is the base model; round r is the base model plus `round_00r/summary.json["adapters_out"]` (the
generator adapter). Every finished round answers the same held-out prompts (`eval.prompt_file`, or the
shipped `prompts.eval_file`): a JSONL file whose rows carry a `prompt` and a length constraint (`type`
plus `target`, or `low`/`high` for a range). Each prompt gets the same seed in every round, so rounds
differ by their adapters, not by their dice.

Artifact: `iterations/<run>/eval/round_NNN.json` (written atomically; its presence means "done"), with one
row per prompt (words, `length_score`, `s_l`, quality-filter verdict, text) and the aggregates
`mean_words`, `median_words`, `repetition_pass_rate`, `length_score`, `s_l`. A rerun computes only the
rounds whose file is missing; the engine is loaded only if there is one.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Optional

from selflengthen import filters, ui
from selflengthen.engines.base import Request
from selflengthen.methods.selflengthen import ROLES
from selflengthen.length_control import Constraint, length_score, s_l
from selflengthen.settings import ConfigError, Settings, read_prompt_rows, shipped_data
from selflengthen.stages.common import RoundContext, derive_seed, mean
from selflengthen.store import CorruptArtifact, atomic_write_json, read_json, sha256_file
from selflengthen.text import count_words

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
AGGREGATES = ("n", "mean_words", "median_words", "repetition_pass_rate", "length_score", "s_l")


# --- the prompt file ------------------------------------------------------------------------------------

def prompt_path(s: Settings) -> Path:
    """`eval.prompt_file`, or the shipped held-out file of the prompt set's language."""
    if s.eval.prompt_file:
        return Path(s.eval.prompt_file).expanduser()
    return shipped_data(s.prompts.get("eval_file", f"eval_{s.prompts['lang']}.jsonl"))


def load_prompts(path: Path, limit: Optional[int] = None) -> list[dict]:
    """Rows `{prompt, type, target}` or `{prompt, type: range, low, high}`; every problem is a ConfigError
    that names `eval.prompt_file`, the line and the fix."""
    fix = ('give eval.prompt_file a JSONL file with one object per line, e.g. {"prompt": "...", '
           '"type": "about", "target": 300} (type: about, above, below; or "type": "range", "low": 200, '
           '"high": 400), or set eval.prompt_file=null for the shipped one')

    def bad(why: str) -> ConfigError:
        return ConfigError(f"Config error: eval.prompt_file={str(path)!r} — {why}. Fix: {fix}.")

    rows = []
    for n, row in read_prompt_rows(path, "eval.prompt_file", fix):
        try:
            constraint = Constraint.from_dict(row)
        except KeyError as exc:
            raise bad(f"line {n} lacks the field {exc.args[0]!r} its length constraint needs") from exc
        except (TypeError, ValueError) as exc:
            raise bad(f"line {n} has an unusable length constraint ({exc})") from exc
        rows.append({"prompt": row["prompt"].strip(), **constraint.to_dict()})
    if not rows:
        raise bad("it holds no prompts")
    if not limit or limit >= len(rows):
        return rows
    # evenly spread over the file (not its head), so a short eval still covers every constraint kind
    return [rows[(i * len(rows)) // limit] for i in range(limit)]


# --- which rounds there are -------------------------------------------------------------------------------

def finished_rounds(run_dir: Path) -> dict[int, dict]:
    """Round number -> generator adapters, for round 0 (the base model) and every finished round 1, 2, ...
    Read-only: a round without a readable summary ends the list (later rounds build on it)."""
    out: dict[int, dict] = {0: {role: None for role in ROLES}}
    r = 1
    while True:
        path = Path(run_dir) / f"round_{r:03d}" / "summary.json"
        if not path.exists():
            return out
        try:
            out[r] = dict(read_json(path)["adapters_out"])
        except (CorruptArtifact, KeyError, TypeError) as exc:
            log.warning("round %d summary is not usable (%s): evaluating up to round %d", r, exc, r - 1)
            return out
        r += 1


def eval_file(run_dir: Path, r: int) -> Path:
    return Path(run_dir) / EVAL_DIR / f"round_{r:03d}.json"


def read_round(run_dir: Path, r: int) -> Optional[dict]:
    """The finished eval of round r, or None (missing or unreadable: it will be redone)."""
    path = eval_file(run_dir, r)
    if not path.exists():
        return None
    try:
        doc = read_json(path)
        if not all(k in doc for k in AGGREGATES + ("rows",)):
            raise CorruptArtifact(f"{path} lacks some aggregates")
        return doc
    except CorruptArtifact as exc:
        log.warning("%s: redoing this round's eval", exc)
        return None


def aggregates_of(doc: dict) -> dict:
    """The numbers a round summary and the report carry (no rows)."""
    return {k: doc[k] for k in AGGREGATES + ("seconds",) if k in doc}


# --- scoring ------------------------------------------------------------------------------------------

def score_row(prompt: dict, text: str, fcfg: filters.FilterConfig) -> dict:
    text = text.strip()
    c = Constraint.from_dict(prompt)
    words = count_words(text)
    verdict = filters.check(text, fcfg)
    return {**prompt, "words": words, "length_score": length_score(c, words), "s_l": s_l(c.reference(), words),
            "passes_filter": verdict.ok, "reason": verdict.reason, "text": text}


def aggregate(rows: list[dict]) -> dict:
    """Means over prompts; `s_l` uses a range's midpoint as L (done per row in `score_row`)."""
    words = [r["words"] for r in rows]
    return {"n": len(rows), "mean_words": mean(words), "median_words": float(statistics.median(words)) if words else 0.0,
            "repetition_pass_rate": mean([1.0 if r["passes_filter"] else 0.0 for r in rows]),
            "length_score": mean([r["length_score"] for r in rows]), "s_l": mean([r["s_l"] for r in rows])}


# --- running ------------------------------------------------------------------------------------------

def evaluate_round(s: Settings, engine, r: int, adapters: dict, prompts: Optional[list[dict]] = None) -> dict:
    """Round r's eval document: read from disk if there, else one wave of generation, scored and written."""
    done = read_round(s.run_dir, r)
    if done is not None:
        return done
    path = prompt_path(s)
    prompts = prompts if prompts is not None else load_prompts(path, s.eval.limit)
    start = time.time()
    ctx = RoundContext(s, r, engine, adapters)  # for decoding params and the chat message shape
    tpl = s.prompts["generate"]
    requests = [Request.chat(f"eval{r:03d}.{i:05d}", ctx.messages(tpl.get("system"), tpl["user"].format(instruction=p["prompt"])),
                             ctx.params(s.eval.max_new_tokens, derive_seed(s.seed, "eval", i)), adapter="generator")
                for i, p in enumerate(prompts)]
    engine.set_adapters(adapters)
    with ui.progress(f"eval · round {r}", len(requests)) as advance:
        texts = engine.generate(requests, advance)
    fcfg = filters.FilterConfig.from_dict(s.prompts["filter"])
    rows = [score_row(p, t, fcfg) for p, t in zip(prompts, texts)]
    doc = {"round": r, **aggregate(rows), "adapter": adapters.get("generator"), "prompt_file": str(path),
           "prompt_file_sha256": sha256_file(path)[:16], "max_new_tokens": s.eval.max_new_tokens,
           "seconds": time.time() - start, "rows": rows}
    atomic_write_json(eval_file(s.run_dir, r), doc)  # its presence is the done record
    return doc


def evaluate_run(s: Settings, engine, rounds: Optional[list[int]] = None) -> dict[int, dict]:
    """Evaluate round 0 and every finished round (or just `rounds`); returns round -> aggregates.
    The caller owns the engine (creates it lazily, closes it)."""
    available = finished_rounds(s.run_dir)
    wanted = sorted(available) if rounds is None else [r for r in rounds if r in available]
    missing = [r for r in wanted if read_round(s.run_dir, r) is None]
    prompts = load_prompts(prompt_path(s), s.eval.limit) if missing else None  # a bad file fails before any model
    out = {}
    for r in wanted:
        doc = evaluate_round(s, engine, r, available[r], prompts)
        if r not in missing:
            _warn_if_stale(s, doc)
        out[r] = aggregates_of(doc)
    return out


def _warn_if_stale(s: Settings, doc: dict) -> None:
    path = prompt_path(s)
    if path.exists() and doc.get("prompt_file_sha256") not in (None, sha256_file(path)[:16]):
        log.warning("eval of round %d was made with another prompt file (%s); delete %s to redo it",
                    doc["round"], doc.get("prompt_file"), eval_file(s.run_dir, doc["round"]))


def table(results: dict[int, dict]):
    """A rich table of round -> aggregates."""
    from rich import box
    from rich.table import Table

    t = Table(title="Held-out eval (round 0 = base model)", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("round", "prompts", "mean\nwords", "median\nwords", "filter\npass", "length\nscore", "S_l"):
        t.add_column(col, justify="right")
    for r, a in sorted(results.items()):
        t.add_row(str(r), str(a["n"]), f"{a['mean_words']:.0f}", f"{a['median_words']:.0f}",
                  f"{a['repetition_pass_rate']:.0%}", f"{a['length_score']:.3f}", f"{a['s_l']:.1f}")
    return t
