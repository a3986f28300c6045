"""LongBench-Write's quality score S_q (DESIGN §7): the judge prompt, reading a verdict, scoring, a runner.

A judge model (any model an engine serves) scores an answer on six dimensions from 1 to 5 and is told to
ignore length (S_l measures that). Each score s maps to (s - 1) * 25, so 1..5 becomes 0..100, and S_q is
the mean of the six. The template lives in `selflengthen/conf/prompts/<lang>.yaml` under `judge`.

**Reading a verdict** (`parse_verdict`) is tolerant, because judges — small ones above all — wrap their
JSON in code fences or prose, write keys as "breadth & depth" or "Reading_Experience", give scores as
strings ("4", "4/5") or as {"score": 4, ...}: the first JSON object (searched anywhere in the text, nested
objects included) that holds all six dimensions wins; failing that, "Relevance: 4"-style pairs are read
from the text. A verdict with a dimension missing or outside [1, 5] is unparseable (None), never guessed.

**Running the judge** (`judge_answers`) sends every item through `engine.generate` in waves; unparseable
verdicts are counted and re-asked with a new seed (`params_factory(item, attempt)`) up to `max_attempts`;
items still without a verdict are counted as failed and score None. Model output never raises; engine
errors (out of memory, a missing model) do, as everywhere else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from selflengthen.engines.base import Request, SamplingParams

# Canonical dimension names, in LongBench-Write's order.
DIMENSIONS = ("relevance", "accuracy", "coherence", "clarity", "breadth_and_depth", "reading_experience")

# Normalised key (lower case, letters and CJK only) -> dimension. Chinese names for judges that translate keys.
_ALIASES = {
    "relevance": "relevance", "相关性": "relevance",
    "accuracy": "accuracy", "准确性": "accuracy",
    "coherence": "coherence", "连贯性": "coherence",
    "clarity": "clarity", "清晰度": "clarity", "清晰性": "clarity",
    "breadthanddepth": "breadth_and_depth", "breadthdepth": "breadth_and_depth", "广度与深度": "breadth_and_depth",
    "广度和深度": "breadth_and_depth",
    "readingexperience": "reading_experience", "阅读体验": "reading_experience",
}
_SCORE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*5(?:\.0)?)?\s*$")
_FENCE_RE = re.compile(r"```[a-zA-Z]*")
# "Relevance": 4 / Breadth & Depth - 4/5 / 阅读体验：4 — a name, up to a few separator characters, a score;
# not followed by "to 5" / "-5", which is a scale description rather than a score.
_PAIR_RE = re.compile(
    r"(relevance|accuracy|coherence|clarity|breadth\s*(?:and|&)?\s*depth|reading\s*experience"
    r"|相关性|准确性|连贯性|清晰度|清晰性|广度[与和]深度|阅读体验)"
    r"[\s\"'*_)）]{0,4}[:：=\-–]?[\s\"'*]{0,3}(\d+(?:\.\d+)?)(?!\s*(?:to|[-–~到至])\s*\d)(?:\s*/\s*5)?",
    re.IGNORECASE)


def _dimension(key: Any) -> Optional[str]:
    if not isinstance(key, str):
        return None
    key = key.lower().replace("&", "and")
    # "Relevance（相关性）" as the zh prompt lists it: try the whole name, then its Latin and its CJK part.
    for pattern in (r"[^a-z\u4e00-\u9fff]", r"[^a-z]", r"[^\u4e00-\u9fff]"):
        dim = _ALIASES.get(re.sub(pattern, "", key))
        if dim is not None:
            return dim
    return None


def _score(value: Any) -> Optional[float]:
    """A 1..5 score from an int, float, "4", "4/5" or {"score": 4}; None if absent or out of range."""
    if isinstance(value, Mapping):
        value = next((v for k, v in value.items() if isinstance(k, str) and k.lower() in ("score", "rating")), None)
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        m = _SCORE_RE.match(value)
        value = float(m.group(1)) if m else None
    if not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if 1.0 <= value <= 5.0 else None


def _from_mapping(obj: Mapping) -> Optional[dict[str, float]]:
    scores: dict[str, float] = {}
    for key, value in obj.items():
        dim = _dimension(key)
        if dim is not None and dim not in scores:
            s = _score(value)
            if s is None:
                return None  # a named dimension with a bad score: the verdict is not trustworthy
            scores[dim] = s
    if len(scores) == len(DIMENSIONS):
        return {d: scores[d] for d in DIMENSIONS}
    for value in obj.values():  # {"scores": {...}} and similar wrappers
        if isinstance(value, Mapping):
            found = _from_mapping(value)
            if found is not None:
                return found
    return None


def _json_objects(text: str):
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def parse_verdict(text: Optional[str]) -> Optional[dict[str, float]]:
    """The six scores of a judge's reply, keyed by DIMENSIONS (values 1..5), or None when unparseable."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = _FENCE_RE.sub("\n", text)
    for obj in _json_objects(text):
        found = _from_mapping(obj)
        if found is not None:
            return found
    pairs: dict[str, float] = {}
    for m in _PAIR_RE.finditer(text):
        dim, s = _dimension(m.group(1)), _score(m.group(2))
        if dim is None or s is None:
            return None
        pairs.setdefault(dim, s)
    return {d: pairs[d] for d in DIMENSIONS} if len(pairs) == len(DIMENSIONS) else None


def dimension_scores(scores: Union[Mapping[str, float], Sequence[float]]) -> list[float]:
    """Each 1..5 score mapped to (s - 1) * 25, in DIMENSIONS order for a mapping."""
    values = [scores[d] for d in DIMENSIONS] if isinstance(scores, Mapping) else list(scores)
    if not values:
        raise ValueError("no scores")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= 5:
            raise ValueError(f"a score must be a number from 1 to 5, got {v!r}")
    return [(v - 1) * 25.0 for v in values]


def s_q(scores: Union[Mapping[str, float], Sequence[float]]) -> float:
    """LongBench-Write's S_q: the mean of (s - 1) * 25 over the dimensions, 0..100."""
    mapped = dimension_scores(scores)
    return sum(mapped) / len(mapped)


# --- prompt and runner --------------------------------------------------------------------------------

def judge_messages(templates: Mapping, instruction: str, answer: str) -> list[tuple[str, str]]:
    """Chat messages for one verdict; `templates` is the `judge` prompts section."""
    user = templates["user"].format(instruction=instruction, answer=answer)
    system = templates.get("system")
    return ([("system", system)] if system else []) + [("user", user)]


@dataclass
class JudgeReport:
    """Per-item verdicts (None = never parsed) and S_q, plus counters for the eval table."""

    verdicts: list[Optional[dict[str, float]]]
    scores: list[Optional[float]]  # S_q per item, None where no verdict was parsed
    requests: int = 0  # judge generations sent, re-asks included
    unparseable: int = 0  # replies that could not be read (each re-ask that failed counts again)
    failed: int = 0  # items with no verdict after max_attempts
    attempts: list[int] = field(default_factory=list)  # generations spent per item
    replies: list[str] = field(default_factory=list)  # each item's last judge reply, to see why one failed

    @property
    def mean_s_q(self) -> Optional[float]:
        got = [s for s in self.scores if s is not None]
        return sum(got) / len(got) if got else None

    def dimension_means(self) -> dict[str, Optional[float]]:
        """Mean of (s - 1) * 25 per dimension over the judged items."""
        got = [dimension_scores(v) for v in self.verdicts if v is not None]
        return {d: (sum(row[i] for row in got) / len(got) if got else None) for i, d in enumerate(DIMENSIONS)}

    def summary(self) -> dict:
        return {"s_q": self.mean_s_q, "judged": len(self.scores) - self.failed, "failed": self.failed,
                "requests": self.requests, "unparseable": self.unparseable, **{f"s_q_{d}": v for d, v in
                                                                                self.dimension_means().items()}}


def judge_answers(engine, items: Sequence[Mapping], templates: Mapping,
                  params_factory: Callable[[int, int], SamplingParams], max_attempts: int = 3, *,
                  adapter: Optional[str] = None, id_prefix: str = "judge",
                  progress: Optional[Callable[[int], None]] = None) -> JudgeReport:
    """Score each item (`{"instruction": ..., "answer": ...}`) with the judge behind `engine`.

    Wave k sends every item still without a verdict, with `params_factory(item_index, attempt)` (attempt
    0, 1, ...: a caller derives a fresh seed from it, so a re-ask is a new draw and a rerun the same one).
    `adapter` is the engine adapter the judge runs with (None: the base model)."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    n = len(items)
    report = JudgeReport(verdicts=[None] * n, scores=[None] * n, attempts=[0] * n, replies=[""] * n)
    pending = list(range(n))
    messages = [judge_messages(templates, str(it["instruction"]), str(it["answer"])) for it in items]
    for attempt in range(max_attempts):
        if not pending:
            break
        requests = [Request.chat(f"{id_prefix}.{i:05d}.a{attempt}", messages[i], params_factory(i, attempt),
                                 adapter=adapter) for i in pending]
        texts = engine.generate(requests, progress) if progress is not None else engine.generate(requests)
        report.requests += len(requests)
        still = []
        for i, text in zip(pending, texts):
            report.attempts[i] += 1
            report.replies[i] = text if isinstance(text, str) else ""
            verdict = parse_verdict(text)
            if verdict is None:
                report.unparseable += 1
                still.append(i)
            else:
                report.verdicts[i], report.scores[i] = verdict, s_q(verdict)
        pending = still
    report.failed = len(pending)
    return report
