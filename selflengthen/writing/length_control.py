"""Length constraints: the four kinds, how well a length meets one, and how one is phrased into a query.

Owns the arithmetic of length control and nothing else; the templates live in `selflengthen/conf/prompts/<lang>.yaml`
under `length_control`. Everything here is a pure function of its arguments (randomness comes in as a
`random.Random`), so the collection step and the eval scorer make the same choices on a rerun.

Kinds and their acceptance band (the LonGen rule), for a length `g` in words:

- `about L`  -> [0.8 L, 1.2 L]
- `range a b` -> [a, b]
- `above L`  -> [L, 1.5 L]   ("more than L", "at least L": the model should not overshoot wildly either)
- `below L`  -> [0.5 L, L]   ("less than L", "no more than L": a one-line answer is not a success)

Two scores:

- `length_score(c, g)`: 1 inside the band, falling linearly to 0 at half the lower edge and at 1.5x the
  upper edge (LonGen).
- `s_l(L, g)`: LongBench-Write's piecewise score against a single required length L, 0..100; it punishes
  falling short (slope 1/2 in L/g) harder than overshooting (slope 1/3 in g/L). For a `range` constraint
  the caller uses the midpoint (a + b) / 2 as L (`Constraint.reference()`).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

KINDS = ("about", "range", "above", "below")
MAX_WORDS = 10_000_000  # a length past this is a typo, not a request (ints beyond it would overflow the maths)


@dataclass(frozen=True)
class Constraint:
    """One length requirement in words: `target` for about/above/below, `low`/`high` for range."""

    kind: str
    target: Optional[int] = None
    low: Optional[int] = None
    high: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"constraint kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "range":
            if self.target is not None or self.low is None or self.high is None:
                raise ValueError("a range constraint needs low and high and no target")
            if not 0 < self.low < self.high:
                raise ValueError(f"a range constraint needs 0 < low < high, got {self.low}..{self.high}")
        else:
            if self.target is None or self.low is not None or self.high is not None:
                raise ValueError(f"an {self.kind!r} constraint needs a target and no low/high")
            if self.target <= 0:
                raise ValueError(f"target must be positive, got {self.target}")

    def band(self) -> tuple[float, float]:
        """The lengths that fully satisfy the constraint (inclusive). Exact for integer inputs:
        `L * 4 / 5` divides an exact integer once, so an integer edge compares equal to itself."""
        if self.kind == "range":
            return float(self.low), float(self.high)
        n = self.target
        if self.kind == "about":
            return n * 4 / 5, n * 6 / 5
        if self.kind == "above":
            return float(n), n * 3 / 2
        return n / 2, float(n)  # below

    def reference(self) -> float:
        """The single length L that `s_l` compares against: the target, or a range's midpoint."""
        if self.kind == "range":
            return (self.low + self.high) / 2
        return float(self.target)

    def to_dict(self) -> dict:
        """The eval-file row format: `type` plus `target`, or `low` and `high`."""
        if self.kind == "range":
            return {"type": "range", "low": self.low, "high": self.high}
        return {"type": self.kind, "target": self.target}

    @staticmethod
    def from_dict(row: Mapping) -> "Constraint":
        """Read `type` and its numbers from a row; other keys (e.g. `prompt`) are ignored."""
        kind = row["type"]
        if kind == "range":
            return Constraint(kind, low=_words(row, "low"), high=_words(row, "high"))
        return Constraint(kind, target=_words(row, "target"))


def _words(row: Mapping, key: str) -> int:
    """A length in words from a row: a whole number (300.0 is 300), never true/false, a fraction (300.9), a
    string or a non-finite or astronomically large value (Infinity, 1e400) — each a ValueError naming `key`."""
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key} must be a whole number of words, got {v!r}")
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise ValueError(f"{key} must be a whole number of words, got {v!r}")
        v = int(v)
    if abs(v) > MAX_WORDS:
        raise ValueError(f"{key}={v} is more words than any answer can hold (at most {MAX_WORDS:,})")
    return v


def length_score(c: Constraint, g: int) -> float:
    """LonGen length score in [0, 1]: 1 in the band, 2g/lo - 1 below it, 3 - 2g/hi above it (floored at 0)."""
    lo, hi = c.band()
    if g < lo:
        return max(0.0, 2 * g / lo - 1)
    if g > hi:
        return max(0.0, 3 - 2 * g / hi)
    return 1.0


def s_l(target: float, g: int) -> float:
    """LongBench-Write S_l in [0, 100] for required length `target` (L) and output length `g`.

    g > L: 100 * max(0, 1 - (g/L - 1) / 3); otherwise 100 * max(0, 1 - (L/g - 1) / 2); g = 0 scores 0.
    For a range constraint pass its midpoint (`Constraint.reference()`).
    """
    if target <= 0:
        raise ValueError(f"target must be positive, got {target}")
    if g <= 0:
        return 0.0
    if g > target:
        return 100 * max(0.0, 1 - (g / target - 1) / 3)
    return 100 * max(0.0, 1 - (target / g - 1) / 2)


# --- making a constraint that an existing answer already meets --------------------------------------

def _steps(value: float) -> tuple[int, ...]:
    """Friendly rounding steps for a number of this size, coarsest first, always ending at 1."""
    if value >= 1000:
        return (100, 50, 10, 5, 1)
    if value >= 150:
        return (50, 10, 5, 1)
    return (10, 5, 1)


def _friendly(preferred: float, ok: Callable[[int], bool], fallback: int) -> int:
    """The coarsest round number near `preferred` that `ok` accepts; `fallback` (known ok) otherwise."""
    for step in _steps(preferred):
        down = math.floor(preferred / step) * step
        for n in (round(preferred / step) * step, down, down + step):
            if n > 0 and ok(n):
                return n
    return fallback


def make_constraint(words: int, rng: random.Random, kinds: Sequence[str] | Mapping[str, float] = KINDS) -> Constraint:
    """A constraint of a random kind (from `kinds`: a sequence drawn uniformly, or a mapping kind -> weight)
    that an answer of `words` words satisfies.

    The numbers are rounded to what a person would ask for (multiples of 10, 50 or 100 by size) while
    keeping `words` inside the band, so `length_score(c, words) == 1` always holds.
    """
    if words < 1:
        raise ValueError(f"need a positive word count, got {words}")
    if isinstance(kinds, Mapping):
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
    else:
        kind = rng.choice(list(kinds))
    if kind not in KINDS:
        raise ValueError(f"unknown constraint kind {kind!r}")

    def fits(c: Constraint) -> bool:
        lo, hi = c.band()
        return lo <= words <= hi

    if kind == "range":
        low = _friendly(words * rng.uniform(0.6, 0.95),
                        lambda n: n <= words, fallback=words)
        high = _friendly(words * rng.uniform(1.05, 1.5),
                         lambda n: n >= words and n > low, fallback=max(words, low + 1))
        return Constraint("range", low=low, high=high)
    # about: target near words; above: target a bit under words; below: target a bit over words.
    spread = {"about": (0.88, 1.12), "above": (0.7, 0.95), "below": (1.05, 1.6)}[kind]
    target = _friendly(words * rng.uniform(*spread),
                       lambda n: fits(Constraint(kind, target=n)), fallback=words)
    return Constraint(kind, target=target)


def phrase(query: str, c: Constraint, templates: Mapping, rng: random.Random) -> str:
    """Attach one randomly chosen phrasing of `c` to `query`.

    `templates` is the `prompts.length_control` mapping (a whole `prompts` mapping also works): one list
    of phrasings per kind, with `{n}` or `{low}`/`{high}`, and `join` with `{query}` and `{constraint}`.
    """
    if "length_control" in templates:
        templates = templates["length_control"]
    pattern = rng.choice(list(templates[c.kind]))
    if c.kind == "range":
        constraint = pattern.format(low=c.low, high=c.high)
    else:
        constraint = pattern.format(n=c.target)
    return templates["join"].format(query=query.strip(), constraint=constraint)


# --- a rule-based reader of phrasings, for tests that check the YAML says what it means -------------

_NUM = r"(?:\d[\d,]*|\{n\}|\{low\}|\{high\})"

# Ordered: the first matching rule wins, so negated forms ("no more than") come before the bare ones
# ("more than") they contain, and a two-number range comes before everything.
_RULES = {
    "en": [
        ("range", rf"\bbetween\s+{_NUM}\s+and\s+{_NUM}|\bfrom\s+{_NUM}\s+(?:to|up to)\s+{_NUM}"
                  rf"|{_NUM}\s*(?:-|–|—|to)\s*{_NUM}\s+words"),
        ("below", r"\b(?:no|not|never)\s+(?:more|longer)\s+than|\bnot\s+(?:to\s+)?(?:exceed|go\s+(?:over|past|beyond))"
                  r"|\b(?:don't|do not|must not|mustn't|should not|shouldn't|never)\s+(?:exceed|go\s+(?:over|past|beyond)|run\s+(?:over|past))"),
        ("above", r"\b(?:no|not)\s+(?:less|fewer|shorter)\s+than"
                  r"|\b(?:don't|do not|must not|should not|never)\s+(?:fall|drop|go)\s+(?:short\s+of|below|under)"),
        ("above", r"\bmore\s+than|\bat\s+least|\bover\s+" + _NUM + r"|\bexceed|\bbeyond|\blonger\s+than"
                  r"|\bminimum|\bupwards\s+of|\bin\s+excess\s+of|\bsurpass"),
        ("below", r"\b(?:less|fewer|shorter)\s+than|\bunder\s+" + _NUM + r"|\bat\s+most|\bmaximum|\bup\s+to"
                  r"|\bwithin\s+" + _NUM + r"|\bbelow\s+" + _NUM + r"|\bcap(?:ped)?\b|\blimit\b"),
        ("about", r"\babout\b|\baround\b|\broughly\b|\bapproximately\b|\bclose\s+to\b|\bnear\b|\bin\s+the\s+"
                  r"(?:region|neighbou?rhood|ballpark)\s+of|\bgive\s+or\s+take|\bor\s+so\b|~"),
    ],
    "zh": [
        ("range", rf"{_NUM}\s*(?:到|至|-|–|—|~|～)\s*{_NUM}|介于.*{_NUM}.*(?:和|与).*{_NUM}"
                  rf"|在\s*{_NUM}\s*(?:和|与)\s*{_NUM}"),
        ("below", r"不(?:要|得|能|可|宜|应)?(?:超过|超出|多于|高于)|别超过|勿超过|不超出"),
        ("above", r"不(?:要|得|能|可|宜|应)?(?:少于|低于|短于)|别少于|勿少于"),
        ("above", r"超过|多于|以上|至少|起码|最少|高于|不止"),
        ("below", r"少于|以内|之内|以下|最多|至多|不到|不足|低于|上限|为限"),
        ("about", r"约|左右|大约|大概|上下|差不多|前后|上下浮动|接近"),
    ],
}


def kind_of_phrase(text: str, lang: str) -> Optional[str]:
    """Which kind of length constraint `text` expresses, by keyword rules for `lang` ("en"/"zh"), or None."""
    flags = re.IGNORECASE if lang == "en" else 0
    for kind, pattern in _RULES[lang]:
        if re.search(pattern, text, flags):
            return kind
    return None
