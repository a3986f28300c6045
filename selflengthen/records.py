"""One schema per record the run reads back from its own folder, checked on every read.

The run folder's records are input too: a file can come back with the wrong JSON shape (a list, `null`, a
field of the wrong type) after a hand edit, a bad copy or a tool that rewrote it. Every reader goes through
`read_record(path, Schema)` (or `check_record`), which reads the file with `store.read_json` (a plain file
only: a folder, a pipe or a device is refused before it is opened, so nothing blocks) and validates it here.
A record that does not fit is a `CorruptArtifact` whose message names the file, what is wrong and what to
do (`layout.describe`); the caller decides whether that means "redo it" (a stage's done record, a round's
summary, an eval) or "stop and ask" (the manifest).

The schemas check what the readers rely on (types of the fields they index) and allow extra fields, so a
record written by a newer version still reads. pydantic does the checking (strict: `true` is not a number,
`"3"` is not a whole number); see docs/DECISIONS.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from selflengthen.store import CorruptArtifact, read_json


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
    """`eval/round_NNN.json`, `eval/final.json` (evaluate.py)."""

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


def check_record(path: Path, data: Any, schema: type[_Record]) -> dict:
    """`data` (read from `path`) if it fits `schema`; else a CorruptArtifact naming the file, the problem and
    the fix."""
    from selflengthen import layout

    if not isinstance(data, dict):
        problem = f"it holds {_kind(data)}, not a JSON object"
    else:
        try:
            schema.model_validate(data)
            return data
        except ValidationError as exc:
            problem = first_error(exc)
    what, fix = layout.describe(path)
    raise CorruptArtifact(f"{path} ({what}) has the wrong shape: {problem}. Fix: {fix}.")


def read_record(path: Path, schema: type[_Record]) -> dict:
    """Read and check one record (a plain file holding one JSON object that fits `schema`)."""
    return check_record(Path(path), read_json(path), schema)
