"""Tests written to kill mutants that survived tools/mutation.sh (see README, Tests): each pins a behaviour
of a core module that no other fast test checked exactly."""

from __future__ import annotations

import random

from selflengthen.writing.sampling import keep_indices


class _Always:
    """An rng stub: every draw is `value`."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_shortest_of_two_has_rank_one_and_is_never_kept_when_its_chance_is_zero():
    # n = 2: ranks are 0 and 1 exactly (not 1/3, not both 0), so with a = 1, p = 1 the shorter one has
    # keep probability 0 and the longer one 1, whatever the seed
    for seed in range(200):
        assert keep_indices([5, 10], 1.0, 1.0, random.Random(seed)) == [1]
    # with a = 0.5 the shorter one is kept about half the time
    kept = sum(0 in keep_indices([5, 10], 0.5, 1.0, random.Random(seed)) for seed in range(400))
    assert 150 < kept < 250


def test_probability_zero_means_never_even_on_a_zero_draw():
    # random() may return exactly 0.0: "kept with probability 0" must still drop the item (draw < p, not <=)
    assert keep_indices([1, 2, 3], 1.0, 1.0, _Always(0.0)) == [1, 2]
    # and probability 1 keeps it even on the largest draw
    assert keep_indices([1, 2, 3], 1.0, 1.0, _Always(0.9999999)) == [2]
