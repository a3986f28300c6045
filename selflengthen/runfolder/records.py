"""One schema per record the run reads back from its own folder, checked on every read.

The run folder's records are input too: a file can come back with the wrong JSON shape (a list, `null`, a
field of the wrong type) after a hand edit, a bad copy or a tool that rewrote it. Every reader goes through
`store.read_record(path, Schema)` (or `store.check_record`), which reads the file with `store.read_json` (a plain file
only: a folder, a pipe or a device is refused before it is opened, so nothing blocks) and validates it here.
A record that does not fit is a `CorruptArtifact` whose message names the file, what is wrong and what to
do (`describe`, below); the caller decides whether that means "redo it" (a stage's done record, a round's
summary, an eval) or "stop and ask" (the manifest).

The schemas check what the readers rely on (types of the fields they index) and allow extra fields, so a
record written by a newer version still reads. pydantic does the checking (strict: `true` is not a number,
`"3"` is not a whole number); see docs/DECISIONS.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# the run folder's names (layout.py spells them; this module imports nothing of the package, so that store.py
# can use it: tests/commands/test_hostile_records.py checks they agree)
MANIFEST, SUMMARY, EVAL_DIR, REPORT_DIR, EXPORT_DIR, COLLECT_DIR = ("manifest.json", "summary.json", "eval", "report",
                                                                   "export", "collect")


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Manifest(_Record):
    """`manifest.json` (manifest.py)."""

    created: float
    method: str
    stages: list[str] = Field(default_factory=list)
    semantic: dict[str, Any]
    rounds_complete: int = 0
    history: list[dict[str, Any]] = Field(default_factory=list)


class Done(_Record):
    """A stage's `done.json` (store.mark_done): the checksum of every artifact, written last."""

    files: dict[str, str]
    finished: float
    summary: dict[str, Any]

    @field_validator("files")
    @classmethod
    def _inside(cls, files: dict[str, str]) -> dict[str, str]:
        for name in files:
            p = Path(name)
            if not name or p.is_absolute() or ".." in p.parts:
                raise ValueError(f"the artifact name {name!r} points outside the stage folder")
        return files


class RoundSummary(_Record):
    """`round_NNN/summary.json` (recipe.build_summary), written last: the round is complete."""

    round: int
    method: Optional[str] = None
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rejections: dict[str, int] = Field(default_factory=dict)
    adapters_in: dict[str, Optional[str]] = Field(default_factory=dict)
    adapters_out: dict[str, Optional[str]]
    seconds: dict[str, float] = Field(default_factory=dict)
    eval: Optional[dict[str, Any]] = None
    semantic: Optional[dict[str, Any]] = None


class EvalRow(_Record):
    prompt: str
    type: str
    words: int
    target: Optional[int] = None
    low: Optional[int] = None
    high: Optional[int] = None
    length_score: Optional[float] = None
    s_l: Optional[float] = None
    passes_filter: Optional[bool] = None
    text: Optional[str] = None


class EvalDoc(_Record):
    """`eval/round_NNN.json`, `eval/final.json` (evidence/heldout.py)."""

    round: Union[int, Literal["final"]]
    n: int
    mean_words: Optional[float]
    median_words: Optional[float]
    repetition_pass_rate: Optional[float]
    length_score: Optional[float]
    s_l: Optional[float]
    rows: list[EvalRow]
    open: Optional[dict[str, Any]] = None
    constrained: Optional[dict[str, Any]] = None
    key: Optional[dict[str, Any]] = None


class ExportSummary(_Record):
    rows: int
    made_by: Optional[dict[str, Any]] = None


class ExportDone(Done):
    """`export/done.json` (collect.export)."""

    summary: ExportSummary


class TrainDoneSummary(_Record):
    adapter: Optional[str] = None


class TrainDone(Done):
    """`train/<role>/done.json` and the final model's (stages.train)."""

    summary: TrainDoneSummary


def done_schema(path: Path) -> type[Done]:
    """The schema of the done record at `path`: the export's, a training's (train/<role>/, rl/<role>/) or a
    stage's."""
    path = Path(path)
    if path.parent.name == "export":
        return ExportDone
    if path.parent.parent.name in ("train", "rl"):
        return TrainDone
    return Done


class Metrics(_Record):
    """A trainer's `metrics.json`."""

    adapter_sha256: Optional[str] = None


class Lenient(_Record):
    """A record read as a mapping with no further rule (collect/source.json: compared whole)."""


# --- item logs: one record per line, keyed by `id` ------------------------------------------------------------

class ItemRecord(_Record):
    """A line of an item log (store.ItemLog): the fields every stage's records share, each typed when present."""

    id: str
    item: Optional[str] = None
    attempt: Optional[int] = None
    text: Optional[str] = None
    ok: Optional[bool] = None
    reason: Optional[str] = None
    step: Optional[int] = None
    words: Optional[int] = None
    final: Optional[bool] = None
    accepted: Optional[bool] = None
    judge: Optional[str] = None
    # `pass` is a keyword: checked in `item_problem`


# log file name -> the fields its readers index on every record (a pass record of extend/passes.jsonl also
# needs pass, text and words; a final one needs ok)
ITEM_FIELDS = {
    "attempts.jsonl": ("item", "attempt", "text", "ok", "reason"),
    "candidates.jsonl": ("text", "ok", "reason"),
    "passes.jsonl": ("item", "attempt"),
    "steps.jsonl": ("item", "step", "text", "ok", "reason"),
}


def item_problem(log_name: str, rec: Any) -> Optional[str]:
    """Why `rec` cannot be a record of the item log `log_name`, or None when it can."""
    if not isinstance(rec, dict):
        return f"a record is {_kind(rec)}, not an object"
    try:
        ItemRecord.model_validate(rec)
    except ValidationError as exc:
        return first_error(exc)
    need = list(ITEM_FIELDS.get(log_name, ()))
    if log_name == "passes.jsonl":
        need += ["ok"] if rec.get("final") else ["pass", "text", "words"]
        if "pass" in rec and (type(rec["pass"]) is not int):
            return "field 'pass' should be a whole number"
    missing = [k for k in need if rec.get(k) is None]
    return f"a record lacks the field {missing[0]!r}" if missing else None


# --- reading --------------------------------------------------------------------------------------------

def _kind(value: Any) -> str:
    return {list: "a list", type(None): "null", str: "a string", bool: "true/false", int: "a number",
            float: "a number", dict: "an object"}.get(type(value), type(value).__name__)


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "the whole record"
    got = err.get("input")
    got_text = f" (it holds {_kind(got)})" if not isinstance(got, dict) or not err.get("loc") else ""
    return f"field {where!r}: {err.get('msg', 'invalid')}{got_text}" if err.get("loc") else \
        f"{err.get('msg', 'invalid')}{got_text}"


def problem(data: Any, schema: type[_Record]) -> Optional[str]:
    """Why `data` does not fit `schema`, or None when it does."""
    if not isinstance(data, dict):
        return f"it holds {_kind(data)}, not a JSON object"
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        return first_error(exc)
    return None




# --- what a file of the run is, and what to do when it is damaged ----------------------------------------

def _round_of(parts: tuple[str, ...]) -> Optional[int]:
    for part in parts:
        if part.startswith("round_") and part[6:].isdigit():
            return int(part[6:])
    return None


def describe(path: Path) -> tuple[str, str]:
    """(what the file at `path` is to the run, what a user does when it is damaged or of the wrong kind), for
    the one-paragraph errors about records the run reads back (store.read_json, store.read_record)."""
    p = Path(path)
    parts, name = p.parts, p.name
    r = _round_of(parts[-4:])  # the round's folder is one of the last few parts (never a folder above the run)
    where = f"round {r}'s " if r is not None else ""
    stage = p.parent.name
    if p.parent.parent.name in ("train", "rl"):  # one record per role: train/<role>/done.json
        stage = f"{p.parent.parent.name}/{p.parent.name}"
    if name == MANIFEST:
        return ("the run's manifest: what the run was made with",
                "restore it from a backup, or delete it: the next run rebuilds it from the config its finished "
                "rounds recorded (and refuses if this command's config differs)")
    if name == SUMMARY:
        return (f"{where}summary, the record that seals the round",
                "delete it and run the same command again: the round is sealed again from its stages' records "
                "(finished stages are not redone)")
    if p.parent.name == EXPORT_DIR:
        return ("the exported data set" if name != "done.json" else "the export's done record",
                f"delete the folder {p.parent} and run python -m selflengthen collect again: it exports again")
    up = [p.parent.name, p.parent.parent.name, p.parent.parent.parent.name]  # nearest folders first
    if up[0] == EVAL_DIR or up[2] == EVAL_DIR and up[1] == "by_key":
        return (f"the held-out eval {name}", "delete it: python -m selflengthen eval evaluates that model again")
    if COLLECT_DIR in up[:2]:
        return (f"the collection's {name}",
                f"delete the folder {p.parent} and run python -m selflengthen collect again: it collects again")
    if up[0] == REPORT_DIR:
        return (f"the report's {name}", "delete it: python -m selflengthen report writes it again")
    if name == "done.json":
        return (f"{where}{stage} stage's done record",
                "delete it and run the same command again: the stage is redone (from its item log where it has "
                "one, so nothing already generated is generated again)")
    if name == "metrics.json":
        return (f"{where}{stage} training's metrics",
                f"delete the folder {p.parent} and run the same command again: that training is redone")
    if name.endswith(".jsonl"):
        return (f"{where}{stage} stage's {name}",
                f"delete it and the stage's done.json ({p.parent / 'done.json'}) and run the same command "
                f"again: the stage is redone")
    if name.endswith(".log"):
        return (f"the run's log {name}", "delete it (or the link in its place): the run starts a new log")
    return ("a file of the run",
            "restore it or delete it and run the same command again; if the run folder cannot be trusted, "
            "start a separate run with run.name=<new name>")
