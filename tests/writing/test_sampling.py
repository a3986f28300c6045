"""Length-aware sampling (selflengthen.writing.sampling)."""

from __future__ import annotations

import math
import random

import pytest

from selflengthen.writing.sampling import keep_indices, keep_probability


def test_keep_probability():
    assert keep_probability(0.0, 2, 3) == 1.0
    assert keep_probability(0.5, 2, 3) == pytest.approx(0.75)
    assert keep_probability(1.0, 2, 3) == 0.0  # clipped at 0, not -1
    assert keep_probability(0.9, 0, 3) == 1.0


def test_longest_is_always_kept():
    for seed in range(200):
        rng = random.Random(seed)
        lengths = [rng.randint(1, 1000) for _ in range(rng.randint(1, 50))]
        longest = lengths.index(max(lengths))  # the first of equal maxima ranks first
        kept = keep_indices(lengths, 2, 3, random.Random(seed))
        assert longest in kept
        assert kept == sorted(kept) and len(set(kept)) == len(kept)


def test_single_item_is_kept():
    assert keep_indices([5], 2, 3, random.Random(0)) == [0]
    assert keep_indices([], 2, 3, random.Random(0)) == []


def test_empirical_keep_rate_per_rank_bucket():
    n, a, p, buckets = 20_000, 2.0, 3.0, 10
    rng = random.Random(0)
    lengths = rng.sample(range(10 * n), n)  # distinct, so ranks are unambiguous
    kept = set(keep_indices(lengths, a, p, random.Random(1)))
    order = sorted(range(n), key=lengths.__getitem__, reverse=True)
    size = n // buckets
    for b in range(buckets):
        members = order[b * size : (b + 1) * size]
        rate = sum(i in kept for i in members) / size
        expected = sum(keep_probability(pos / (n - 1), a, p) for pos in range(b * size, (b + 1) * size)) / size
        sd = math.sqrt(max(expected * (1 - expected), 1e-4) / size)
        assert abs(rate - expected) < 5 * sd + 1e-9, (b, rate, expected)
    # The bottom ~20% (r > 2^-1/3 ≈ 0.794) is never kept.
    assert not kept & set(order[int(0.8 * n) :])


def test_reproducible_and_one_draw_per_item():
    lengths = [random.Random(3).randint(1, 99) for _ in range(500)]
    assert keep_indices(lengths, 2, 3, random.Random(42)) == keep_indices(lengths, 2, 3, random.Random(42))
    rng = random.Random(42)
    keep_indices(lengths, 2, 3, rng)
    reference = random.Random(42)
    for _ in range(len(lengths)):
        reference.random()
    assert rng.random() == reference.random()


def test_ties_rank_by_original_index():
    # Equal lengths: the earlier item ranks higher. With a large a only rank 0 survives.
    assert keep_indices([7, 7, 7, 7], 1e9, 1, random.Random(0)) == [0]
    assert keep_indices([1, 7, 3, 7], 1e9, 1, random.Random(0)) == [1]


def test_a_zero_keeps_everything():
    lengths = list(range(100))
    assert keep_indices(lengths, 0, 3, random.Random(0)) == lengths


@pytest.mark.parametrize("a, p", [(-0.1, 3), (float("nan"), 3), (2, 0), (2, -1)])
def test_invalid_parameters_raise(a, p):
    with pytest.raises(ValueError, match="a >= 0|p > 0"):
        keep_indices([1, 2, 3], a, p, random.Random(0))
