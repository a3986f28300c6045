"""Length constraints: bands, both scores at hand-computed points, make_constraint, phrasing, classifier."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from selflengthen.writing.length_control import (
    KINDS, Constraint, kind_of_phrase, length_score, make_constraint, phrase, s_l,
)

PROMPTS = Path(__file__).resolve().parents[2] / "selflengthen" / "conf" / "prompts"
LANGS = ("en", "zh")


def _length_control(lang: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(PROMPTS / f"{lang}.yaml"))["length_control"]


# --- Constraint ---------------------------------------------------------------------------------------

def test_bands_follow_longen_rule():
    assert Constraint("about", target=100).band() == (80, 120)     # 0.8*100, 1.2*100
    assert Constraint("range", low=200, high=300).band() == (200, 300)
    assert Constraint("above", target=200).band() == (200, 300)    # 200, 1.5*200
    assert Constraint("below", target=400).band() == (200, 400)    # 0.5*400, 400
    assert Constraint("about", target=55).band() == (44, 66)       # 0.8*55 = 44 exactly, 1.2*55 = 66


@pytest.mark.parametrize("row", [{"type": "about", "target": 300}, {"type": "range", "low": 50, "high": 90},
                                 {"type": "above", "target": 120}, {"type": "below", "target": 700}])
def test_dict_round_trip(row):
    c = Constraint.from_dict({"prompt": "ignored", **row})
    assert c.to_dict() == row
    assert Constraint.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kwargs", [dict(kind="longish", target=10), dict(kind="about"),
                                    dict(kind="about", target=0), dict(kind="range", low=10),
                                    dict(kind="range", low=30, high=20), dict(kind="below", target=5, low=1)])
def test_invalid_constraints_are_refused(kwargs):
    with pytest.raises(ValueError):
        Constraint(**kwargs)


def test_reference_is_target_or_midpoint():
    assert Constraint("above", target=200).reference() == 200
    assert Constraint("range", low=200, high=300).reference() == 250  # (200 + 300) / 2


# --- length_score (LonGen) ----------------------------------------------------------------------------

@pytest.mark.parametrize("c, g, expected", [
    # about 100 -> band [80, 120]
    (Constraint("about", target=100), 80, 1.0),     # lower edge
    (Constraint("about", target=100), 100, 1.0),    # inside
    (Constraint("about", target=100), 120, 1.0),    # upper edge
    (Constraint("about", target=100), 60, 0.5),     # 2*60/80 - 1 = 1.5 - 1
    (Constraint("about", target=100), 40, 0.0),     # 2*40/80 - 1 = 0
    (Constraint("about", target=100), 20, 0.0),     # 2*20/80 - 1 = -0.5 -> 0
    (Constraint("about", target=100), 150, 0.5),    # 3 - 2*150/120 = 3 - 2.5
    (Constraint("about", target=100), 180, 0.0),    # 3 - 2*180/120 = 0
    (Constraint("about", target=100), 240, 0.0),    # 3 - 2*240/120 = -1 -> 0
    # range 200..300
    (Constraint("range", low=200, high=300), 200, 1.0),
    (Constraint("range", low=200, high=300), 250, 1.0),
    (Constraint("range", low=200, high=300), 300, 1.0),
    (Constraint("range", low=200, high=300), 150, 0.5),   # 2*150/200 - 1
    (Constraint("range", low=200, high=300), 100, 0.0),   # 2*100/200 - 1
    (Constraint("range", low=200, high=300), 375, 0.5),   # 3 - 2*375/300 = 3 - 2.5
    (Constraint("range", low=200, high=300), 450, 0.0),   # 3 - 2*450/300 = 0
    # above 200 -> band [200, 300]
    (Constraint("above", target=200), 200, 1.0),
    (Constraint("above", target=200), 260, 1.0),
    (Constraint("above", target=200), 300, 1.0),
    (Constraint("above", target=200), 199, 0.99),  # 2*199/200 - 1 = 1.99 - 1
    (Constraint("above", target=200), 150, 0.5),   # 2*150/200 - 1
    (Constraint("above", target=200), 330, 0.8),   # 3 - 2*330/300 = 3 - 2.2
    (Constraint("above", target=200), 450, 0.0),   # 3 - 2*450/300 = 0
    # below 400 -> band [200, 400]
    (Constraint("below", target=400), 200, 1.0),
    (Constraint("below", target=400), 320, 1.0),
    (Constraint("below", target=400), 400, 1.0),
    (Constraint("below", target=400), 150, 0.5),    # 2*150/200 - 1
    (Constraint("below", target=400), 0, 0.0),      # 2*0/200 - 1 = -1 -> 0
    (Constraint("below", target=400), 401, 0.995),  # 3 - 2*401/400 = 3 - 2.005
    (Constraint("below", target=400), 500, 0.5),    # 3 - 2*500/400 = 3 - 2.5
])
def test_length_score_hand_computed(c, g, expected):
    assert length_score(c, g) == pytest.approx(expected)


# --- s_l (LongBench-Write) ----------------------------------------------------------------------------

@pytest.mark.parametrize("target, g, expected", [
    (100, 100, 100.0),        # exact
    (100, 80, 87.5),          # 100*(1 - (100/80 - 1)/2) = 100*(1 - 0.25/2)
    (100, 50, 50.0),          # 100*(1 - (100/50 - 1)/2) = 100*(1 - 1/2)
    (100, 25, 0.0),           # 100*(1 - (4 - 1)/2) = -50 -> 0
    (100, 0, 0.0),            # no output
    (100, 120, 93.3333333),   # 100*(1 - (1.2 - 1)/3) = 100*(1 - 0.0667)
    (100, 200, 66.6666667),   # 100*(1 - (2 - 1)/3)
    (100, 400, 0.0),          # 100*(1 - (4 - 1)/3) = 0
    (100, 500, 0.0),          # 100*(1 - (5 - 1)/3) < 0 -> 0
    (400, 300, 83.3333333),   # 100*(1 - (400/300 - 1)/2) = 100*(1 - 1/6)
    (250, 200, 87.5),         # range 200..300 -> midpoint 250: 100*(1 - (1.25 - 1)/2)
    (250, 300, 93.3333333),   # 100*(1 - (300/250 - 1)/3) = 100*(1 - 0.2/3)
    (250, 500, 66.6666667),   # 100*(1 - (2 - 1)/3)
])
def test_s_l_hand_computed(target, g, expected):
    assert s_l(target, g) == pytest.approx(expected)


def test_s_l_uses_range_midpoint():
    c = Constraint("range", low=200, high=300)
    assert s_l(c.reference(), 200) == pytest.approx(87.5)  # L = 250, see above


# --- make_constraint ----------------------------------------------------------------------------------

def test_make_constraint_is_always_satisfied_by_the_answer():
    rng = random.Random(0)
    for i in range(4000):
        words = rng.choice([rng.randint(1, 60), rng.randint(1, 3000), rng.randint(1000, 20000)])
        c = make_constraint(words, random.Random(i))
        assert length_score(c, words) == 1.0, (words, c)


@pytest.mark.parametrize("kind", KINDS)
def test_make_constraint_every_kind_every_small_count(kind):
    for words in range(1, 1500):
        c = make_constraint(words, random.Random(words), kinds=(kind,))
        assert c.kind == kind
        assert length_score(c, words) == 1.0, (words, c)


def test_make_constraint_numbers_are_friendly_and_seeded():
    for words in range(200, 5000, 7):
        c = make_constraint(words, random.Random(words))
        assert all(v % 10 == 0 for v in (c.target, c.low, c.high) if v is not None), (words, c)
    assert make_constraint(777, random.Random(5)) == make_constraint(777, random.Random(5))
    kinds = {make_constraint(500, random.Random(s)).kind for s in range(50)}
    assert kinds == set(KINDS)


def test_make_constraint_refuses_empty_answer():
    with pytest.raises(ValueError):
        make_constraint(0, random.Random(0))


# --- phrase and kind_of_phrase ------------------------------------------------------------------------

@pytest.mark.parametrize("lang", LANGS)
def test_every_yaml_phrasing_expresses_its_own_kind(lang):
    lc = _length_control(lang)
    for kind in KINDS:
        for template in lc[kind]:
            assert kind_of_phrase(template, lang) == kind, template
            text = template.format(low=120, high=380) if kind == "range" else template.format(n=450)
            assert kind_of_phrase(text, lang) == kind, text


@pytest.mark.parametrize("lang", LANGS)
def test_phrase_attaches_a_formatted_phrasing(lang):
    lc = _length_control(lang)
    query = "Write a poem." if lang == "en" else "写一首诗。"
    for seed in range(40):
        rng = random.Random(seed)
        c = make_constraint(rng.randint(50, 900), rng)
        text = phrase(query, c, lc, rng)
        assert text.startswith(query)
        assert kind_of_phrase(text[len(query):], lang) == c.kind
        for v in (c.target, c.low, c.high):
            assert v is None or str(v) in text
        assert "{" not in text and "}" not in text


def test_phrase_accepts_the_whole_prompts_mapping():
    prompts = OmegaConf.to_container(OmegaConf.load(PROMPTS / "en.yaml"))
    text = phrase("  Write a poem. ", Constraint("below", target=90), prompts, random.Random(1))
    assert text.startswith("Write a poem. ") and "90" in text


@pytest.mark.parametrize("text, lang, kind", [
    ("Use no more than 300 words.", "en", "below"),      # not "more than" -> above
    ("Use not more than 300 words.", "en", "below"),
    ("Use no fewer than 300 words.", "en", "above"),     # not "fewer than" -> below
    ("Do not exceed 300 words.", "en", "below"),         # not "exceed" -> above
    ("Write at least 300 words.", "en", "above"),
    ("Write between 100 and 200 words.", "en", "range"),
    ("Write roughly 300 words.", "en", "about"),
    ("Write a poem.", "en", None),
    ("字数不超过300字。", "zh", "below"),                  # not 超过 -> above
    ("字数不少于300字。", "zh", "above"),                  # not 少于 -> below
    ("不足300字。", "zh", "below"),
    ("300字以上。", "zh", "above"),
    ("300到500字。", "zh", "range"),
    ("300字左右。", "zh", "about"),
    ("写一首诗。", "zh", None),
])
def test_kind_of_phrase_handles_negations(text, lang, kind):
    assert kind_of_phrase(text, lang) == kind


def test_make_constraint_draws_kinds_with_the_given_weights():
    """The paper's mix (eval/add_length_control.py): about 0.40, range 0.25, above 0.10, below 0.25."""
    weights = {"about": 0.40, "range": 0.25, "above": 0.10, "below": 0.25}
    rng = random.Random(7)
    n = 8000
    drawn = [make_constraint(3000, rng, weights).kind for _ in range(n)]
    for kind, w in weights.items():
        assert abs(drawn.count(kind) / n - w) < 0.02, kind
    assert {make_constraint(500, random.Random(i), {"above": 1.0, "below": 0.0}).kind for i in range(50)} == {"above"}
