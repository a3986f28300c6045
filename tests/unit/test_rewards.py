"""LongWriter-Zero rewards: targets, length band edges, format, repetition, group normalisation, and the
reward hack (padding to the target with repeated paragraphs) closed."""

from __future__ import annotations

import json
import random

import pytest

from selflengthen.methods import lwzero_rewards as R
from selflengthen.writing.length_control import Constraint

# --- targets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("c, expected", [
    (Constraint("about", target=80), (72, 88)),  # ±10%, not rounded to 100s
    (Constraint("about", target=2000), (1800, 2200)),
    (Constraint("range", low=120, high=180), (120, 180)),
    (Constraint("above", target=200), (200, 300)),
    (Constraint("below", target=600), (300, 600)),
    (Constraint("above", target=10000), (10000, 13000)),  # at most 3,000 wide
    (Constraint("below", target=10000), (7000, 10000)),
    (Constraint("range", low=100, high=5000), (100, 5000)),  # a range the user wrote is kept
])
def test_target_range_from_explicit_constraints(c, expected):
    assert R.target_range(c) == expected


@pytest.mark.parametrize("text, expected", [
    ("1200-1800", (1200, 1800)),
    ("The answer should have 1,150 to 1,820 words.", (1100, 1900)),  # snapped outward to 100s
    ("[300, 700]", (300, 700)),
    ('{"lo": 400, "hi": 900}', (400, 900)),
    ("Range: 500–500", (500, 600)),  # at least one step wide
    ("about 1000 words", (900, 1100)),  # a lone number is about N: ±10%
    ("100-9000", (3000, 6000)),  # at most 3,000 wide, around the middle
    ("I cannot tell.", None),
    ("0-0", None),
])
def test_parse_range_applies_the_paper_rules(text, expected):
    assert R.parse_range(text) == expected


def test_predict_ranges_asks_once_per_prompt_and_caches_in_a_file(tmp_path):
    calls: list[list[str]] = []

    def generate(texts):
        calls.append(texts)
        return ["800-1500" if "story" in t else "no idea" for t in texts]

    cache = tmp_path / "run" / "ranges.json"
    prompts = ["Write a story.", "Write a poem.", "Write a story."]
    first = R.predict_ranges(prompts, generate, cache, predictor="m", fallback=(100, 200))
    assert first == [(800, 1500), (100, 200), (800, 1500)]
    assert len(calls) == 1 and len(calls[0]) == 2  # the repeated prompt is asked once
    assert "Write a story." in calls[0][0] or "Write a story." in calls[0][1]
    assert len(json.loads(cache.read_text())) == 1  # the unreadable answer is not cached
    again = R.predict_ranges(prompts, generate, cache, predictor="m", fallback=(100, 200))
    assert again == first and calls[1] == [R.PREDICT_PROMPT.format(prompt="Write a poem.")]
    R.predict_ranges(["Write a story."], generate, cache, predictor="other")  # another predictor asks anew
    assert len(calls) == 3


def test_constrained_row_phrases_a_constraint_and_its_range():
    templates = {"about": ["Aim for about {n} words."], "range": ["Write {low}-{high} words."],
                 "above": ["Write more than {n} words."], "below": ["Keep it under {n} words."],
                 "join": "{query} {constraint}"}
    rng = random.Random(0)
    for i in range(20):
        row = R.constrained_row(f"p{i}", "Write about tea.", 300, templates, rng)
        assert row["prompt"].startswith("Write about tea. ") and row["lo"] < row["hi"]
        if row["constraint"]["type"] != "about":  # about N is N ± 10%, narrower than the band 300 was fit to
            assert row["lo"] <= 300 <= row["hi"]
    assert R.eval_row("e", {"prompt": "x", "type": "about", "target": 250}) == {
        "id": "e", "prompt": "x", "lo": 225, "hi": 275, "constraint": {"type": "about", "target": 250}}


# --- length ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("words, expected", [
    (0, 0.0),
    (50, 0.25),  # below lo: len/lo
    (199, 199 / 200),
    (200, 1.0),  # lo
    (300, 1.0),  # hi
    (301, 699 / 700),  # above hi: (L_max - len)/(L_max - hi)
    (650, 0.5),
    (999, 1 / 700),
    (1000, 0.0),  # L_max
    (5000, 0.0),  # after L_max
])
def test_length_reward_band_edges(words, expected):
    assert R.length_reward(words, 200, 300, 1000) == pytest.approx(expected)


def test_length_reward_rejects_a_band_beyond_l_max():
    with pytest.raises(ValueError, match="l_max"):
        R.length_reward(10, 200, 1000, 1000)
    assert R.length_reward(0, 0, 100, 200) == 1.0  # lo 0: nothing is "too short"


# --- format ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion, ok", [
    ("<think>plan</think><answer>The text.</answer>", True),
    ("  <think>plan</think>\n\n<answer>The text.</answer>\n", True),
    ("<answer>The text.</answer>", False),  # no thinking
    ("<think>plan</think>The text.", False),  # no answer tags
    ("<answer>The text.</answer><think>plan</think>", False),  # wrong order
    ("<think>a</think><think>b</think><answer>The text.</answer>", False),  # two thinks
    ("<think>plan</think><answer>One.</answer><answer>Two.</answer>", False),  # two answers
    ("<think>plan</think><answer>The text.</answer> trailing", False),  # text outside the tags
    ("<think>plan</think><answer>  </answer>", False),  # empty answer
])
def test_format_with_thinking(completion, ok):
    assert R.format_ok(completion, think=True) is ok
    assert R.format_reward(completion, think=True) == (1.0 if ok else 0.0)
    assert R.answer_text(completion, think=True) == ("The text." if ok else "")


def test_format_without_thinking():
    assert R.format_reward("Just the text.", think=False) == 1.0
    assert R.format_reward("<think>x</think>Text.", think=False) == 0.0
    assert R.answer_text("  Just the text. \n", think=False) == "Just the text."


# --- repetition --------------------------------------------------------------------------------------

PARAS = [
    "The harbour town wakes slowly in autumn, when the ferries run twice a day and the cafes open late.",
    "Walkers follow the cliff path north to the lighthouse, where the keeper's cottage is now a museum.",
    "In the evening the fishing boats come in and the market on the quay sells the catch by lamplight.",
    "Rain is likely, so pack a coat, but the storms are half the reason people come here at all.",
]


def test_repetition_reward_is_one_for_distinct_paragraphs():
    text = "\n\n".join(PARAS)
    assert R.duplicate_paragraphs(text) == [False] * 4
    assert R.repetition_reward(text) == 1.0
    assert R.distinct_words(text) == R.count_words(text)


def test_near_duplicate_paragraphs_are_caught_even_when_reworded():
    near = PARAS[0].replace("slowly", "gently").replace("late", "early")  # defeats the exact 10-gram check
    text = "\n\n".join(PARAS[:2] + [near])
    assert R.duplicate_paragraphs(text) == [False, False, True]
    assert R.repetition_reward(text) == pytest.approx(1 - R.count_words(near) / R.count_words(text))


def test_repeated_ngrams_inside_one_paragraph_are_penalised():
    loop = "The cat sat on the warm mat by the door. " * 6
    assert 0 < R.repeated_ngram_share(loop) < 1
    assert R.repetition_reward(loop) < 0.5
    assert R.repeated_ngram_share(PARAS[0]) == 0.0


# --- combining: TRL's aggregation -------------------------------------------------------------------


def trl_advantages(rewards: dict, weights: dict, group_size: int) -> list[float]:
    """The advantages TRL's GRPOTrainer gives these rewards under the aggregation training/grpo_lora.py sets,
    `multi_objective_aggregation="normalize_then_sum"`: the lines of that branch of
    trl/trainer/grpo_trainer.py (`_generate_and_score_completions`), with TRL's own `nanstd`. Each reward is
    normalised within its group, the weighted sum is normalised over the batch."""
    import torch
    from trl.trainer.utils import nanstd

    names = list(rewards)
    per_func = torch.tensor([rewards[n] for n in names], dtype=torch.float32).T
    w = torch.tensor([float(weights.get(n, 0.0)) for n in names])
    grouped = per_func.view(-1, group_size, len(names))
    mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
    std_k = nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean_k)
    summed = (((grouped - mean_k) / (std_k + 1e-4)).view(-1, len(names)) * w.unsqueeze(0)).nansum(dim=1)
    return ((summed - torch.nanmean(summed)) / (nanstd(summed) + 1e-4)).tolist()


def test_trl_normalises_each_reward_in_its_group_and_a_zero_weight_drops_one():
    out = trl_advantages({"a": [0, 1], "b": [1, 0], "c": [3, 3]}, {"a": 3, "b": 1, "c": 1}, group_size=2)
    assert out[0] < 0 < out[1]  # a outweighs b; c, equal in its group, adds nothing
    assert trl_advantages({"a": [0, 1], "q": [9, 0]}, {"a": 1, "q": 0}, 2) == pytest.approx(
        trl_advantages({"a": [0, 1]}, {"a": 1}, 2))


def _score(answers, lo, hi, l_max=3000, weights=None):
    """The trainer's rewards for one group of answers to one prompt, combined as TRL combines them."""
    rewards = {
        "length": [R.length_reward(R.distinct_words(a), lo, hi, l_max) for a in answers],
        "format": [R.format_reward(a, think=False) for a in answers],
        "repetition": [R.repetition_reward(a) for a in answers],
    }
    return trl_advantages(rewards, weights or {"length": 1, "format": 1, "repetition": 1}, len(answers))


def test_padding_to_the_target_with_repeated_paragraphs_scores_below_the_short_answer():
    short = "\n\n".join(PARAS)  # ~75 words, short of the 300-400 target
    padded = "\n\n".join(PARAS * 5)  # the same answer copied up to the target
    assert R.count_words(short) < 300 <= R.count_words(padded) <= 400  # raw length: the hack would pay
    padded_score, short_score = _score([padded, short], 300, 400)
    assert padded_score < short_score
    # reworded copies (past the exact n-gram check) and a bigger group do not change the verdict
    reworded = "\n\n".join(PARAS + [p.replace("the", "a", 1) for p in PARAS * 4])
    other = "\n\n".join(PARAS[:2])
    scores = _score([padded, reworded, short, other], 300, 400)
    assert scores[0] < scores[2] and scores[1] < scores[2]
    # even when length weighs far more than repetition
    padded_score, short_score = _score([padded, short], 300, 400, weights={"length": 10, "repetition": 1})
    assert padded_score < short_score
