"""Length-aware sampling (DESIGN §4): keep mostly the longer items of a set.

Items are ranked by length, longest first; the item at rank r (0 = longest, 1 = shortest) is kept with
probability max(0, 1 - a·r^p). With the paper's a = 2, p = 3 the longest items are always kept and the
bottom ~20% (r > 2^(-1/3) ≈ 0.79) never. One sort, then one pass: O(n log n).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from selflengthen.support.checks import rule


@dataclass(frozen=True)
class Sampling:
    """`sampling:` — keep with probability max(0, 1 - a * r^p), r = length rank."""

    a: float = field(default=2.0, metadata=rule(ge=0.0, fix="use the paper's sampling.a=2 (0 keeps everything)"))
    p: float = field(default=3.0, metadata=rule(gt=0.0, fix="use the paper's sampling.p=3"))


def keep_probability(r: float, a: float, p: float) -> float:
    """Chance to keep the item at length rank `r` (0 = longest, 1 = shortest)."""
    return max(0.0, 1.0 - a * r**p)


def keep_indices(lengths: Sequence[int], a: float, p: float, rng: random.Random) -> list[int]:
    """Original indices of the kept items, ascending.

    Ties in length keep their original order (the earlier item ranks higher). Exactly one
    `rng.random()` is drawn per item, in rank order, so the same seed gives the same choice even where
    the probability is 0 or 1.
    """
    if not a >= 0:  # also rejects NaN
        raise ValueError(f"length-aware sampling needs a >= 0 (a = 0 keeps everything), got a={a!r}")
    if not p > 0:
        raise ValueError(f"length-aware sampling needs p > 0, got p={p!r}")
    n = len(lengths)
    # sorted() is stable and stays stable with reverse=True: equal lengths keep index order.
    order = sorted(range(n), key=lengths.__getitem__, reverse=True)
    scale = 1.0 / (n - 1) if n > 1 else 0.0
    draw = rng.random
    kept = [i for pos, i in enumerate(order) if draw() < 1.0 - a * (pos * scale) ** p]
    kept.sort()
    return kept
