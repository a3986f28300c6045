"""Held-out evaluation: how long, how well-formed and how close to the asked length each round's generator writes.

Round 0 is the base model; round r is the base model plus `round_00r/summary.json["adapters_out"]` (the
generator adapter). Every finished round answers the same held-out prompts (`eval.prompt_file`, or the
shipped `prompts.eval_file`): a JSONL file with one `prompt` per row and either a length constraint
(`type` plus `target`, or `"type": "range"` with `low`/`high`) or none (no `type`, or `"type": "none"`: an
open long-writing prompt). Each prompt gets the same seed in every round, so rounds differ by their
adapters, not by their dice.

Scores. Every row: words, filter verdict. Constrained rows also: `length_score` and `s_l`. The document
reports the two groups apart, `open` and `constrained`, each with `n`, `mean_words`, `median_words`,
`max_words`, `repetition_pass_rate` (the constrained group also `length_score`, `s_l`); an empty group has
`n = 0` and None elsewhere. The top-level aggregates stay for older readers: `n`, `mean_words`,
`median_words`, `max_words` and `repetition_pass_rate` over *all* rows; `length_score` and `s_l` over the
constrained rows only (None when the file has none).

What made a result. An eval is a function of its `key` (`eval_key`): the prompt file's sha256, `eval.limit`,
`eval.max_new_tokens`, the eval's decoding (`eval.decoding`), the model path and engine, the generator adapter (its path
relative to the run folder and a sha256 of its weights and config, so a retrained adapter is noticed), the
seed, and the prompt set's generate template and filter. Batch sizes and other throughput knobs are not
in it. A stored result is reused only when its key equals today's; otherwise the round is evaluated
again and a log line says which settings differ.

Files. `eval/round_NNN.json` (written atomically; its presence means "done") holds the eval made with the
settings asked for last, so the report and the README always read one file per round. When another
key's result is about to replace it, the old file moves to `eval/by_key/<hash>/round_NNN.json` (hash: the
first 12 hex digits of the key's sha256), and a later eval with that key brings it back instead of
generating again: `eval.limit=2` for a quick look and the full eval coexist, and neither stands in for
the other. A rerun computes only the rounds with no result for today's key; the engine is loaded only if
there is one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any, Optional

from selflengthen.evidence import benchmarks
from selflengthen.writing import filters
from selflengthen.runfolder import layout
from selflengthen.support import ui
from selflengthen.engines.base import Request, complete
from selflengthen.evidence.judge import DIMENSIONS
from selflengthen.writing.length_control import Constraint, length_score, s_l
from selflengthen.runfolder.records import EvalDoc, TrainDone
from selflengthen.settings import ConfigError, Settings, read_prompt_rows, shipped_data
from selflengthen.stages.common import RoundContext, derive_seed, mean
from selflengthen.runfolder.store import CorruptArtifact, atomic_write_json, check_no_links, read_record, sha256_file
from selflengthen.writing.text import count_words

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
SCORING = 2  # what a stored eval holds: 2 = every row's finish reason and the budget-hit rate
BY_KEY_DIR = "by_key"
OPEN = "none"  # the `type` of an open prompt (a row without `type` means the same)
# budget_hit_rate: the share of answers the token budget cut (they ran to eval.max_new_tokens): length bought
# by looping or rambling past the end shows up here, not as a longer mean alone
GROUP_STATS = ("n", "mean_words", "median_words", "max_words", "repetition_pass_rate", "budget_hit_rate")
LENGTH_STATS = ("length_score", "s_l")
GROUPS = ("open", "constrained")
# with eval.judge: LongBench-Write S_q (0-100, mean over judged rows), its six dimensions, the judge's counters
QUALITY_STATS = ("s_q",) + tuple(f"s_q_{d}" for d in DIMENSIONS) + ("judge",)
AGGREGATES = GROUP_STATS + LENGTH_STATS + GROUPS + QUALITY_STATS
SELF = "self"  # eval.judge=self: the run's own base model judges
JUDGE_MAX_NEW_TOKENS = 128  # a verdict is one JSON object of six scores (~60 tokens)
JUDGE_ATTEMPTS = 3  # an unreadable verdict is re-asked with a new seed this many times in all
# what an eval file must hold to be read at all (files from before open prompts hold just these)
REQUIRED = ("n", "mean_words", "median_words", "repetition_pass_rate", "length_score", "s_l", "rows")


# --- the settings, checked before any generation ----------------------------------------------------------

def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_eval_settings(ev) -> None:
    """The `eval:` section's values, checked before anything loads: one ConfigError naming the key and the fix.
    (An eval with `limit=-1` scored zero prompts and wrote all-zero files that later evals reused.)"""
    def bad(key: str, value: Any, rule: str, fix: str) -> ConfigError:
        return ConfigError(f"Config error: eval.{key}={value!r} — {rule}. Fix: {fix}.")

    if ev.limit is not None and not (_whole(ev.limit) and ev.limit >= 1):
        raise bad("limit", ev.limit, "must be a whole number >= 1, or null for every prompt in the file",
                  "set eval.limit=null to evaluate the whole file, or e.g. eval.limit=8 for a quick look")
    if not (_whole(ev.max_new_tokens) and ev.max_new_tokens >= 1):
        raise bad("max_new_tokens", ev.max_new_tokens, "must be a whole number >= 1 (the answer budget in tokens)",
                  "set eval.max_new_tokens=1024, or larger than the longest target in the prompt file needs")
    if not isinstance(ev.every_round, bool):
        raise bad("every_round", ev.every_round, "must be true or false",
                  "set eval.every_round=false (evaluate with python -m selflengthen eval) or true")
    if ev.prompt_file is not None and not (isinstance(ev.prompt_file, str) and ev.prompt_file.strip()):
        raise bad("prompt_file", ev.prompt_file, "must be a path to a JSONL file, or null",
                  "set eval.prompt_file=null for the shipped held-out prompts, or a path to your own JSONL file")


# --- the prompt file ------------------------------------------------------------------------------------

def prompt_path(s: Settings) -> Path:
    """`eval.prompt_file`, or the shipped held-out file of the prompt set's language. A bare file name that is
    not a file here names a shipped one (`eval.prompt_file=eval_mixed_en.jsonl`), so a preset can point at
    shipped prompts wherever the package is installed."""
    if s.eval.prompt_file:
        path = Path(s.eval.prompt_file).expanduser()
        if not path.exists() and path.name == s.eval.prompt_file and shipped_data(path.name).is_file():
            return shipped_data(path.name)
        return path
    return shipped_data(s.prompts.get("eval_file", f"eval_{s.prompts['lang']}.jsonl"))


def is_open(row: dict) -> bool:
    """An open long-writing prompt: no length constraint."""
    return row.get("type") in (None, OPEN)


def load_prompts(path: Path, limit: Optional[int] = None) -> list[dict]:
    """Rows `{prompt, type, target}`, `{prompt, type: range, low, high}` or `{prompt, type: none}` (open);
    LongBench-Write's and LonGen's files are read as published (benchmarks.py; their rows also carry `format`
    and `counting`). Every problem is a ConfigError that names `eval.prompt_file`, the line and the fix."""
    fix = ('give eval.prompt_file a JSONL file with one object per line, e.g. {"prompt": "...", '
           '"type": "about", "target": 300} (type: about, above, below; or "type": "range", "low": 200, '
           '"high": 400; or no type for an open prompt), or a LongBench-Write file ({"prompt", "type", '
           '"length"}) or a LonGen file ({"query", "type", "constraint"}) as published, or set '
           'eval.prompt_file=null for the shipped one')

    def bad(why: str) -> ConfigError:
        return ConfigError(f"Config error: eval.prompt_file={str(path)!r} — {why}. Fix: {fix}.")

    rows, fmt = [], None
    for n, row in read_prompt_rows(path, "eval.prompt_file", fix, text_keys=("prompt", "query")):
        kind = benchmarks.detect(row)
        fmt = fmt or kind  # the first row says which benchmark's format the file is in
        if kind != fmt:
            raise bad(f"line {n} is in the {kind} format but the file starts in the {fmt} format")
        if fmt != benchmarks.OURS:
            try:
                rows.append(benchmarks.to_eval_row(fmt, row))
            except benchmarks.FormatError as exc:
                raise bad(f"line {n} ({fmt} format): {exc}") from exc
            continue
        if not (isinstance(row.get("prompt"), str) and row["prompt"].strip()):
            raise bad(f"line {n} has no non-empty string field \"prompt\"")
        if is_open(row):
            numbers = sorted(k for k in ("target", "low", "high") if row.get(k) is not None)
            if numbers:  # a forgotten `type`, not an open prompt: scoring it as open would hide the constraint
                raise bad(f"line {n} has {', '.join(numbers)} but no length-constraint type")
            rows.append({"prompt": row["prompt"].strip(), "type": OPEN})
            continue
        try:
            constraint = Constraint.from_dict(row)
        except KeyError as exc:
            raise bad(f"line {n} lacks the field {exc.args[0]!r} its length constraint needs") from exc
        except (TypeError, ValueError) as exc:
            raise bad(f"line {n} has an unusable length constraint ({exc})") from exc
        rows.append({"prompt": row["prompt"].strip(), **constraint.to_dict()})
    if not rows:
        raise bad("it holds no prompts")
    return _spread(rows, limit)


FAR_PAST_BUDGET = 8  # words per token no tokenizer reaches: a constraint past this x the budget is a mistake


def check_budget(prompts: list[dict], max_new_tokens: int, path: Optional[Path] = None) -> Optional[str]:
    """Constrained prompts whose shortest full-score length is past what `eval.max_new_tokens` can write: far
    past (more than FAR_PAST_BUDGET words per token) is a ConfigError; past the budget (more words than
    tokens: about 0.75 English words fit in a token) is the returned warning, since they can only score
    (nearly) 0. None when every target fits."""
    lows = [(Constraint.from_dict(p).band()[0], p) for p in prompts if not is_open(p)]
    past = [(low, p) for low, p in lows if low > max_new_tokens]
    if not past:
        return None
    worst, row = max(past, key=lambda lp: lp[0])
    fix = (f"raise eval.max_new_tokens to at least {int(worst * 1.5)} (about 1.5 tokens per English word), or "
           f"leave these prompts out of eval.prompt_file" + (f"={str(path)!r}" if path else ""))
    if worst > FAR_PAST_BUDGET * max_new_tokens:
        raise ConfigError(f"Config error: eval.max_new_tokens={max_new_tokens} — a prompt asks for at least "
                          f"{worst:,.0f} words ({row.get('type')} {row.get('target') or (row.get('low'), row.get('high'))}), "
                          f"far more than {max_new_tokens} tokens can write, so it could only score 0. Fix: {fix}.")
    return (f"{len(past)} of {len(prompts)} held-out prompts ask for more words (up to {worst:,.0f}) than "
            f"eval.max_new_tokens={max_new_tokens} tokens can write: they will score (nearly) 0 on length. To "
            f"measure them, {fix}.")


def prompt_format(rows: list[dict]) -> str:
    """Which format the prompt file was read as: selflengthen (ours), longbench-write or longen."""
    return (rows[0].get("format") if rows else None) or "selflengthen"


def _spread(rows: list[dict], limit: Optional[int]) -> list[dict]:
    """`limit` rows evenly spread over the file (not its head), each group (open, constrained) getting its
    share, so a short eval still covers both groups and every constraint kind. File order is kept."""
    if not limit or limit >= len(rows):
        return rows
    groups = [g for g in ([i for i, r in enumerate(rows) if is_open(r)],
                          [i for i, r in enumerate(rows) if not is_open(r)]) if g]
    if len(groups) == 2 and limit >= 2:  # proportional, at least one each, adding up to `limit`
        first = min(max(1, round(limit * len(groups[0]) / len(rows))), limit - 1)
        shares = [first, limit - first]
    else:
        shares = [limit]
    picked = [g[(i * len(g)) // k] for g, k in zip(groups, shares) for i in range(k)]
    return [rows[i] for i in sorted(picked)]


# --- which rounds there are -------------------------------------------------------------------------------

def finished_rounds(run_dir: Path) -> dict[int, dict]:
    """Round number -> adapters (absolute paths), for round 0 (the base model: no adapters) and every
    finished round 1, 2, ... (layout.finished_rounds). Read-only."""
    out: dict[int, dict] = {0: {}}
    for r, summary in layout.finished_rounds(run_dir).items():
        out[r] = summary["adapters_out"]
    return out


FINAL = "final"  # the final model's row (stages/final.py), next to rounds 0, 1, 2, ...


def label(r: int | str) -> str:
    return r if isinstance(r, str) else f"round_{r:03d}"


def eval_file(run_dir: Path, r: int | str) -> Path:
    return layout.eval_dir(run_dir) / f"{label(r)}.json"


def final_adapters(s: Settings) -> Optional[dict]:
    """The final model's adapters when the run has one (stages/final.py), else None."""
    role = s.method.answer_role
    done = layout.final_dir(s.run_dir) / "train" / role / "done.json"
    if not os.path.lexists(done):
        return None
    try:
        adapter = read_record(done, TrainDone)["summary"].get("adapter")
    except CorruptArtifact as exc:
        log.warning("%s — the final model is left out", exc)
        return None
    return {role: layout.absolute(s.run_dir, adapter)} if adapter else None


# --- what made a result ---------------------------------------------------------------------------------------

def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def resolve_adapter(run_dir: Path, path: Optional[str]) -> Optional[str]:
    """An adapter folder as the engine needs it: a relative path is relative to the run folder."""
    if not path:
        return None
    return str(Path(path) if Path(path).is_absolute() else Path(run_dir) / path)


def adapter_identity(run_dir: Path, path: Optional[str]) -> Optional[dict]:
    """`{path, sha256}` of an adapter folder: its path relative to the run folder (a moved or copied run keeps
    its identity) and a digest of its config and weights (a retrained adapter at the same path is noticed).
    None for the base model. A missing folder has sha256 None (the engine will say it is missing)."""
    if not path:
        return None
    folder = Path(resolve_adapter(run_dir, path))
    try:
        rel = os.path.relpath(folder.resolve(), Path(run_dir).resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        rel = str(folder)
    if not folder.is_dir():
        return {"path": rel, "sha256": None}
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    # peft writes adapter_config.json + adapter_model.*; its README model card carries no weights
    weights = [p for p in files if p.name == "adapter_config.json" or p.name.startswith("adapter_model")] or files
    h = hashlib.sha256()
    for p in weights:
        h.update(f"{p.relative_to(folder).as_posix()}\x00{sha256_file(p)}\n".encode())
    return {"path": rel, "sha256": h.hexdigest()}


def eval_key(s: Settings, adapters: dict, path: Optional[Path] = None) -> dict:
    """Everything that changes an eval's result (see the module docstring), as plain JSON."""
    path = path or prompt_path(s)
    tpl = s.prompts["generate"]
    return {
        "prompt_file_sha256": sha256_file(path), "limit": s.eval.limit, "max_new_tokens": s.eval.max_new_tokens,
        "decoding": dataclasses.asdict(eval_decoding(s)), "model": s.model_path, "engine": (s.engine or {}).get("name"),
        "adapter": adapter_identity(s.run_dir, adapters.get(s.method.answer_role)), "seed": s.seed,
        "template": {"system": tpl.get("system"), "user": tpl["user"]}, "filter": s.prompts.get("filter"),
        "scoring": SCORING,
        # the judge only when set, so the keys of evals made without one stay what they were
        **({"judge": judge_key(s)} if s.eval.judge else {}),
    }


def eval_decoding(s: Settings):
    """The eval's own sampling (`eval.decoding`, LongBench-Write's by default), not the data-making `decoding`."""
    from selflengthen.settings import EvalDecoding

    return s.eval.decoding or EvalDecoding()


def eval_params(ctx: RoundContext, max_new_tokens: int, seed: int):
    """Sampling parameters of an eval (or judge) generation: `eval.decoding`'s values."""
    d = eval_decoding(ctx.s)
    return dataclasses.replace(ctx.params(max_new_tokens, seed), temperature=d.temperature, top_p=d.top_p,
                               top_k=d.top_k, repetition_penalty=d.repetition_penalty)


def judge_key(s: Settings) -> Optional[dict]:
    """What makes the S_q scores: the judge model, its template, budget and attempts (None: no judge)."""
    if not s.eval.judge:
        return None
    model = s.model_path if s.eval.judge == SELF else s.eval.judge
    return {"model": model, "engine": (s.engine or {}).get("name"), "template": s.prompts.get("judge"),
            "max_new_tokens": JUDGE_MAX_NEW_TOKENS, "attempts": JUDGE_ATTEMPTS}


def key_hash(key: dict) -> str:
    return sha256_json(key)[:12]


def differences(old: Any, new: dict) -> str:
    """Which settings of two keys differ, for the log line that says why a result is recomputed."""
    if not isinstance(old, dict):
        return "it records no settings (made before results recorded them)"
    return "changed: " + ", ".join(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


# --- stored results -----------------------------------------------------------------------------------------

def keyed_file(run_dir: Path, r: int, h: str) -> Path:
    """Where round r's eval made with key hash `h` waits while another key's result is the current one."""
    current = eval_file(run_dir, r)
    return current.parent / BY_KEY_DIR / h / current.name


def _read_doc(path: Path) -> Optional[dict]:
    """An eval document, or None (missing, or unreadable: it will be redone)."""
    if not os.path.lexists(path):
        return None
    try:
        return read_record(path, EvalDoc)
    except CorruptArtifact as exc:
        log.warning("%s: redoing this round's eval", exc)
        return None


def _make_current(run_dir: Path, r: int, doc: dict, old: Optional[dict]) -> None:
    """Write `doc` as round r's current eval; the result `old` it replaces keeps its own keyed file."""
    current = eval_file(run_dir, r)
    if old is not None and isinstance(old.get("key"), dict) and old["key"] != doc["key"]:
        aside = keyed_file(run_dir, r, key_hash(old["key"]))
        check_no_links(current)  # the move follows no link, in either place (store.py's rule for writes)
        check_no_links(aside)
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(current, aside)
    atomic_write_json(current, doc)  # its presence is the done record
    keyed_file(run_dir, r, key_hash(doc["key"])).unlink(missing_ok=True)  # brought back (or redone): one copy


def aggregates_of(doc: dict) -> dict:
    """The numbers a round summary and the report carry (no rows)."""
    return {k: doc[k] for k in AGGREGATES + ("seconds", "key_hash") if k in doc}


# --- scoring ------------------------------------------------------------------------------------------

def score_row(prompt: dict, text: str, fcfg: filters.FilterConfig, finish: str = "stop") -> dict:
    text = text.strip()
    words = (benchmarks.counter(prompt.get("counting")) or count_words)(text)  # a benchmark's rows: its own count
    verdict = filters.check(text, fcfg)
    if is_open(prompt):
        scores = {"length_score": None, "s_l": None}
    else:
        c = Constraint.from_dict(prompt)
        scores = {"length_score": length_score(c, words), "s_l": s_l(c.reference(), words)}
    return {**prompt, "words": words, **scores, "passes_filter": verdict.ok, "reason": verdict.reason,
            "finish": finish, "text": text}


def group_stats(rows: list[dict], lengths: bool = False) -> dict:
    """n, mean/median/longest words and filter pass rate of `rows` (None when empty); with `lengths`, also
    the mean length score and S_l (a range's midpoint is its L, done per row in `score_row`)."""
    words = [r["words"] for r in rows]
    out: dict = {"n": len(rows), "mean_words": None, "median_words": None, "max_words": None,
                 "repetition_pass_rate": None, "budget_hit_rate": None}
    if lengths:
        out.update(length_score=None, s_l=None)
    if not rows:
        return out
    out.update(mean_words=mean(words), median_words=float(statistics.median(words)), max_words=max(words),
               repetition_pass_rate=mean([1.0 if r["passes_filter"] else 0.0 for r in rows]))
    if all("finish" in r for r in rows):  # rows scored before finish reasons were kept have no budget hits to count
        out["budget_hit_rate"] = mean([1.0 if r["finish"] == "length" else 0.0 for r in rows])
    if lengths:
        out.update(length_score=mean([r["length_score"] for r in rows]), s_l=mean([r["s_l"] for r in rows]))
    return out


def aggregate(rows: list[dict]) -> dict:
    """Both groups, plus the top-level aggregates: words and pass rate over all rows, length score and S_l
    over the constrained rows (the only ones that ask for a length)."""
    constrained = group_stats([r for r in rows if not is_open(r)], lengths=True)
    return {**group_stats(rows), "length_score": constrained["length_score"], "s_l": constrained["s_l"],
            "open": group_stats([r for r in rows if is_open(r)]), "constrained": constrained}


# --- running ------------------------------------------------------------------------------------------

def evaluate_round(s: Settings, engine, r: int, adapters: dict, prompts: Optional[list[dict]] = None) -> dict:
    """Round r's eval document: the stored one if today's settings made it, else one wave of generation,
    scored and written."""
    check_eval_settings(s.eval)
    path = prompt_path(s)
    prompts = prompts if prompts is not None else load_prompts(path, s.eval.limit)
    key = eval_key(s, adapters, path)
    current = _read_doc(eval_file(s.run_dir, r))
    if current is not None and current.get("key") == key:
        return current
    kept = _read_doc(keyed_file(s.run_dir, r, key_hash(key)))
    if kept is not None and kept.get("key") == key:
        log.info("eval of %s: the result made earlier with these settings is brought back", label(r))
        _make_current(s.run_dir, r, kept, current)
        return kept
    if current is not None:
        log.warning("eval of %s on disk was made with other settings (%s): evaluating again; the old result "
                    "stays in %s", r, differences(current.get("key"), key), eval_file(s.run_dir, r).parent / BY_KEY_DIR)
    start = time.time()
    ctx = RoundContext(s, r, engine, adapters)  # for decoding params and the chat message shape
    tpl = s.prompts["generate"]
    role = s.method.answer_role
    requests = [Request.chat(f"eval-{label(r)}.{i:05d}", ctx.messages(tpl.get("system"), tpl["user"].format(instruction=p["prompt"])),
                             eval_params(ctx, s.eval.max_new_tokens, derive_seed(s.seed, "eval", i)), adapter=role)
                for i, p in enumerate(prompts)]
    engine.set_adapters({role: resolve_adapter(s.run_dir, a) for role, a in adapters.items()})
    with ui.progress(f"eval · round {r}", len(requests)) as advance:
        done = complete(engine, requests, advance)
    fcfg = filters.FilterConfig.from_dict(s.prompts["filter"])
    rows = [score_row(p, c.text, fcfg, c.finish_reason) for p, c in zip(prompts, done)]
    quality = judge_rows(s, engine, r, rows) if s.eval.judge else {}
    doc = {"round": r, **aggregate(rows), **quality, "adapter": (key["adapter"] or {}).get("path"), "prompt_file": str(path),
           "prompt_format": prompt_format(prompts),
           "prompt_file_sha256": key["prompt_file_sha256"], "max_new_tokens": s.eval.max_new_tokens,
           "limit": s.eval.limit, "key_hash": key_hash(key), "key": key, "seconds": time.time() - start, "rows": rows}
    _make_current(s.run_dir, r, doc, current)
    return doc


def judge_rows(s: Settings, engine, r: int | str, rows: list[dict]) -> dict:
    """LongBench-Write S_q (DESIGN §7) of every row, by the judge `eval.judge` names: "self" = the run's own
    base model on the run's engine (no adapter: the model being trained does not grade itself), else a
    second engine for that model, opened here and closed after. Adds `s_q` and `judge` (the six scores) to
    each row; returns the document's `s_q`, per-dimension `s_q_<dimension>` means and `judge` counters."""
    from selflengthen.engines import session
    from selflengthen.evidence import judge

    own = s.eval.judge != SELF
    judge_engine = session.LazyEngine(s.engine, session.model_resolver(s.eval.judge, s.model_cache)) \
        if own else engine
    ctx = RoundContext(s, 0, judge_engine, {})
    items = [{"instruction": row["prompt"], "answer": row["text"]} for row in rows]
    try:
        if own:
            engine.release()  # the generator's memory back before a second model loads
        with ui.progress(f"judge · round {r}", len(items)) as advance:
            report = judge.judge_answers(
                judge_engine, items, s.prompts["judge"],
                lambda i, attempt: eval_params(ctx, JUDGE_MAX_NEW_TOKENS, derive_seed(s.seed, "judge", label(r), i, attempt)),
                JUDGE_ATTEMPTS, id_prefix=f"judge-{label(r)}", progress=advance)
    finally:
        if own:
            judge_engine.close()
    for row, verdict, score in zip(rows, report.verdicts, report.scores):
        row["s_q"], row["judge"] = score, verdict
    summary = report.summary()
    counters = {k: summary[k] for k in ("judged", "failed", "requests", "unparseable")}
    return {k: v for k, v in summary.items() if k.startswith("s_q")} | {"judge": counters}


def evaluate_run(s: Settings, engine, rounds: Optional[list[int]] = None) -> dict[int, dict]:
    """Evaluate round 0 and every finished round (or just `rounds`); returns round -> aggregates.
    The caller owns the engine (creates it lazily, closes it)."""
    check_eval_settings(s.eval)
    path = prompt_path(s)
    prompts = load_prompts(path, s.eval.limit)  # a bad file fails before any model
    available: dict = finished_rounds(s.run_dir)
    final = final_adapters(s)
    if final is not None:
        available[FINAL] = final
    wanted = list(available) if rounds is None else [r for r in rounds if r in available]
    return {r: aggregates_of(evaluate_round(s, engine, r, available[r], prompts)) for r in wanted}


# --- the table --------------------------------------------------------------------------------------------

def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _groups(a: dict) -> tuple[Optional[dict], dict]:
    """(open, constrained) of an aggregates dict; one from before open prompts (or cut down to the top-level
    numbers) scored every row as constrained."""
    if "constrained" in a:
        return a.get("open"), a["constrained"]
    return None, a


def table(results: dict[int, dict]):
    """A rich table of round -> aggregates, under 80 columns: open prompts (words, longest, filter pass rate)
    and constrained prompts (words, filter pass rate, length score, S_l)."""
    from rich import box
    from rich.table import Table

    t = Table(title="Held-out eval (round 0 = base model)", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True)
    # the group's name heads its first column only: rich has no column groups, and 80 columns are tight
    quality = any(a.get("s_q") is not None for a in results.values())  # S_q only when a judge scored
    for col in ("round", "open\nn", "\nmean", "\nmedian", "\nlongest", "\npass",
                "constr.\nn", "\nmean", "\npass", "length\nscore", "\nS_l") + (("\nS_q",) if quality else ()):
        t.add_column(col, justify="right")
    for r, a in sorted(results.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])):
        o, c = _groups(a)
        o = o or {"n": 0}
        t.add_row(str(r), str(o["n"]), _fmt(o.get("mean_words"), ".0f"), _fmt(o.get("median_words"), ".0f"),
                  _fmt(o.get("max_words"), "d"), _fmt(o.get("repetition_pass_rate"), ".0%"),
                  str(c["n"]), _fmt(c.get("mean_words"), ".0f"), _fmt(c.get("repetition_pass_rate"), ".0%"),
                  _fmt(c.get("length_score"), ".3f"), _fmt(c.get("s_l"), ".1f"),
                  *((_fmt(a.get("s_q"), ".1f"),) if quality else ()))
    return t
