"""The papers' benchmark files, read as they are published, for `eval.prompt_file`.

Three formats, told apart by their fields (`detect`):
- **selflengthen** (ours): `{"prompt", "type": about|above|below|range|none, "target" | "low"/"high"}`.
- **LongBench-Write** (LongWriter, THUDM; `evaluation/longbench_write.jsonl`, `longbench_write_en.jsonl`):
  `{"prompt", "type": <category, e.g. "Community Forum">, "length": <required words>}`. Scored as
  LongBench-Write scores it: S_l against `length`, with its own word count (`count_words_longbench`:
  each Han character and each run of ASCII letters is a word; digits and punctuation are not). Its rows ask
  for one length; the length score reads it as "about `length`" (LongBench-Write itself reports S_l only).
- **LonGen** (Self-Lengthen, Qwen; `eval/LonGen.jsonl`): `{"query", "type": about|range|above|below,
  "constraint": "around 2000 words" | "大约2000字" | "4000字至5000字" | ..., "language", "range"}`. The
  numbers live in the constraint text, read in English and Chinese (`parse_constraint`) and checked against
  `type`; scored with LonGen's own word count (`count_words_longen`: each Han character and CJK or
  full-width symbol is a word, the rest split on whitespace) and its length score; S_l against the target,
  or a range's midpoint.

`to_eval_rows` turns any of them into the eval's rows (`prompt`, `type`, `target` or `low`/`high`), keeping
the benchmark's own fields under `benchmark` and naming the word count in `counting`, so the eval file says
what it read and how it counted.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from selflengthen.writing.length_control import KINDS, Constraint

OURS, LONGBENCH_WRITE, LONGEN = "selflengthen", "longbench-write", "longen"
FORMATS = (OURS, LONGBENCH_WRITE, LONGEN)


class FormatError(ValueError):
    """A row that does not fit the format its file was detected as; the message names the field."""


# --- word counting, as each benchmark's own evaluation code counts ------------------------------------------

_LBW_HAN = re.compile(r"[\u4e00-\u9fff]")
_LBW_WORD = re.compile(r"\b[a-zA-Z]+\b")
_LONGEN_WIDE = re.compile(r"[\u4e00-\u9fff\u3000-\u303f\uff00-\uffef]")


def count_words_longbench(text: str) -> int:
    """LongBench-Write's `count_words` (LongWriter evaluation/pred.py): Han characters + ASCII-letter words."""
    return len(_LBW_HAN.findall(text)) + len(_LBW_WORD.findall(text))


def count_words_longen(text: str) -> int:
    """LonGen's `count_words` (Self-Lengthen eval/length_following_eval.py): Han characters, CJK symbols and
    full-width forms one each, plus the whitespace-separated tokens of the rest."""
    return len(_LONGEN_WIDE.findall(text)) + len(_LONGEN_WIDE.sub(" ", text).split())


COUNTERS: dict[str, Callable[[str], int]] = {LONGBENCH_WRITE: count_words_longbench, LONGEN: count_words_longen}


def counter(counting: Optional[str]) -> Optional[Callable[[str], int]]:
    """The word counter a row names (`counting`), or None for the project's own (text.count_words)."""
    return COUNTERS.get(counting) if counting else None


# --- detection ---------------------------------------------------------------------------------------------

def detect(row: dict) -> str:
    """The format of a file, from its first row's fields."""
    if "query" in row and "constraint" in row and "prompt" not in row:
        return LONGEN
    if "length" in row and "prompt" in row and not any(k in row for k in ("target", "low", "high")) \
            and row.get("type") not in KINDS:
        return LONGBENCH_WRITE
    return OURS


# --- LonGen's constraint text --------------------------------------------------------------------------------

_N = r"(\d[\d,，]*)"
_RULES = [  # (kind, pattern): the first that matches wins, so "no less than" is read before "less than"
    ("range", re.compile(rf"{_N}\s*(?:字|words?)?\s*(?:-|–|—|~|～|至|到|to|and)\s*{_N}", re.I)),
    ("above", re.compile(r"no less than|not less than|at least|不少于|至少|不低于", re.I)),
    ("below", re.compile(r"no more than|not more than|at most|within|不超过|不多于|以内", re.I)),
    ("below", re.compile(r"less than|fewer than|under|below|小于|少于|低于", re.I)),
    ("above", re.compile(r"more than|over|above|大于|多于|超过|以上", re.I)),
    ("about", re.compile(r"around|about|approximately|roughly|大约|约|左右", re.I)),
]


def _num(s: str) -> int:
    return int(re.sub(r"[,，]", "", s))


def parse_constraint(text: str) -> Constraint:
    """A LonGen constraint ("around 2000 words", "大约2000字", "4000字至5000字", "more than 3000 words",
    "小于5000字", "2000-3000 words", ...) as a Constraint. Raises FormatError when it names no length."""
    t = text.strip()
    numbers = [_num(m) for m in re.findall(_N, t)]
    if not numbers:
        raise FormatError(f"the constraint {text!r} holds no number of words")
    for kind, pattern in _RULES:
        m = pattern.search(t)
        if not m:
            continue
        if kind == "range":
            low, high = _num(m.group(1)), _num(m.group(2))
            return Constraint("range", low=low, high=high)
        return Constraint(kind, target=numbers[0])
    raise FormatError(f"the constraint {text!r} is none of about / range / above / below (in English or Chinese)")


def longen_constraint(row: dict) -> Constraint:
    """A LonGen row's constraint: the kind read from its text, the numbers as LonGen's own scorer reads them
    (the first number; a range's first two), and the row's `type` must agree."""
    text, kind = row.get("constraint"), row.get("type")
    if not isinstance(text, str) or not text.strip():
        raise FormatError("its \"constraint\" is not a non-empty string")
    if kind is not None and kind not in KINDS:
        raise FormatError(f"its \"type\" {kind!r} is none of {', '.join(KINDS)}")
    parsed = parse_constraint(text)
    if kind is not None and parsed.kind != kind:
        raise FormatError(f"its \"type\" is {kind!r} but the constraint {text!r} reads as {parsed.kind!r}")
    return parsed


# --- rows for the eval ----------------------------------------------------------------------------------------

def to_eval_row(fmt: str, row: dict) -> dict:
    """One benchmark row as an eval row: `prompt`, `type` + `target` / `low`, `high`, `format`, `counting`,
    and the benchmark's own fields under `benchmark`. Ours pass through unchanged (the caller parses them)."""
    if fmt == OURS:
        return row
    if fmt == LONGBENCH_WRITE:
        length = row.get("length")
        if isinstance(length, bool) or not isinstance(length, (int, float)) or length <= 0 or int(length) != length:
            raise FormatError(f"its \"length\" {length!r} is not a positive whole number of words")
        prompt, c = row["prompt"], Constraint("about", target=int(length))
    else:
        prompt = row.get("query")
        if not isinstance(prompt, str) or not prompt.strip():
            raise FormatError("it has no non-empty string field \"query\"")
        c = longen_constraint(row)
    return {"prompt": prompt.strip(), **c.to_dict(), "format": fmt, "counting": fmt,
            "benchmark": {k: v for k, v in row.items() if k not in ("prompt", "query")}}
