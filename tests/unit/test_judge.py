"""selflengthen.evidence.judge: LongBench-Write S_q — verdict parsing, scoring by hand-computed values, the runner."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from selflengthen.engines.base import SamplingParams
from selflengthen.evidence.judge import DIMENSIONS, dimension_scores, judge_answers, judge_messages, parse_verdict, s_q

PROMPTS = Path(__file__).resolve().parents[2] / "selflengthen" / "conf" / "prompts"
KEYS = ("Relevance", "Accuracy", "Coherence", "Clarity", "Breadth and Depth", "Reading Experience")
VALID = json.dumps(dict(zip(KEYS, (5, 4, 3, 3, 2, 1))))
EXPECTED = dict(zip(DIMENSIONS, (5.0, 4.0, 3.0, 3.0, 2.0, 1.0)))


def _templates(lang: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(PROMPTS / f"{lang}.yaml"))["judge"]


# --- scoring ----------------------------------------------------------------------------------------------

def test_s_q_hand_computed():
    # (100 + 75 + 50 + 50 + 25 + 0) / 6
    assert s_q([5, 4, 3, 3, 2, 1]) == pytest.approx(50.0)
    assert s_q(EXPECTED) == pytest.approx(50.0)
    assert s_q([5] * 6) == 100.0 and s_q([1] * 6) == 0.0
    # (75 + 75 + 50 + 75 + 50 + 25) / 6 = 350 / 6
    assert s_q([4, 4, 3, 4, 3, 2]) == pytest.approx(58.3333333)
    assert dimension_scores([5, 4, 3, 3, 2, 1]) == [100.0, 75.0, 50.0, 50.0, 25.0, 0.0]


@pytest.mark.parametrize("bad", [[], [0, 3], [6], [True] * 6])
def test_s_q_refuses_scores_outside_1_to_5(bad):
    with pytest.raises(ValueError):
        s_q(bad)


# --- parse_verdict ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    VALID,
    f"```json\n{VALID}\n```",
    f"Here is my evaluation.\n\n```\n{VALID}\n```\nThe answer is uneven overall.",
    f"Sure! {VALID} Let me know if you need more.",
    '{"relevance": "5", "ACCURACY": "4", " coherence ": 3, "Clarity": 3.0, "breadth & depth": "2/5", '
    '"reading_experience": 1}',
    '{"BreadthAndDepth": 2, "ReadingExperience": 1, "Relevance": 5, "Accuracy": 4, "Coherence": 3, "Clarity": 3}',
    '{"scores": {"Relevance": {"score": 5, "reason": "on topic"}, "Accuracy": 4, "Coherence": 3, "Clarity": 3, '
    '"Breadth and Depth": 2, "Reading Experience": 1}}',
    '{"相关性": 5, "准确性": 4, "连贯性": 3, "清晰度": 3, "广度与深度": 2, "阅读体验": 1}',
    '{"Relevance（相关性）": 5, "Accuracy（准确性）": 4, "Coherence（连贯性）": 3, "Clarity（清晰度）": 3, '
    '"Breadth and Depth（广度与深度）": 2, "Reading Experience（阅读体验）": 1}',
    # broken JSON (trailing comma): read as name/score pairs
    '{"Relevance": 5, "Accuracy": 4, "Coherence": 3, "Clarity": 3, "Breadth and Depth": 2, "Reading Experience": 1,}',
    "Relevance: 5\nAccuracy: 4/5\nCoherence - 3\n**Clarity**: 3\nBreadth & Depth: 2\nReading experience: 1",
])
def test_parse_verdict_tolerates_how_judges_write(text):
    assert parse_verdict(text) == EXPECTED


@pytest.mark.parametrize("text", [
    None,
    "",
    "The answer is good.",
    '{"Relevance": 5, "Accuracy": 4, "Coherence": 3, "Clarity": 3, "Breadth and Depth": 2}',  # one missing
    VALID.replace("5", "6"),  # out of range
    VALID.replace("1}", "0}"),
    VALID.replace("5", '"five"'),
    VALID.replace("5", "true"),
    '{"Relevance": n, "Accuracy": n, "Coherence": n, "Clarity": n, "Breadth and Depth": n, "Reading Experience": n}',
    "Rate each of Relevance, Accuracy, Coherence, Clarity, Breadth and Depth, Reading Experience from 1 to 5.",
])
def test_parse_verdict_is_none_when_unreadable(text):
    assert parse_verdict(text) is None


def test_the_first_complete_object_wins():
    partial = '{"Relevance": 2}'
    assert parse_verdict(f"{partial} then {VALID}") == EXPECTED


# --- prompt -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "zh"])
def test_judge_prompt_names_every_dimension_and_ignores_length(lang):
    t = _templates(lang)
    assert {n for _, n, _, _ in string.Formatter().parse(t["user"]) if n is not None} == {"instruction", "answer"}
    msgs = judge_messages(t, "Write about {braces}.", "An answer with {braces} too.")
    user = msgs[-1][1]
    assert [r for r, _ in msgs] == ["user"]
    assert "Write about {braces}." in user and "An answer with {braces} too." in user
    for key in KEYS:
        assert key in user
    assert ("ignore length" in user) if lang == "en" else ("忽略篇幅" in user)
    # the example object the prompt shows must not itself read as a verdict
    assert parse_verdict(user) is None


# --- judge_answers ----------------------------------------------------------------------------------------

class ScriptedEngine:
    """Replies from a script per item: garbage first, then valid JSON (or garbage forever)."""

    def __init__(self, scripts: dict[int, list[str]]):
        self.scripts = scripts
        self.calls: list[list] = []

    def generate(self, requests):
        self.calls.append(list(requests))
        out = []
        for r in requests:
            item, attempt = int(r.id.split(".")[1]), int(r.id.split(".a")[1])
            script = self.scripts[item]
            out.append(script[min(attempt, len(script) - 1)])
        return out


def test_judge_answers_reasks_unparseable_verdicts_with_a_new_seed():
    items = [{"instruction": f"Write {i}.", "answer": f"Answer {i}."} for i in range(3)]
    engine = ScriptedEngine({
        0: [VALID],
        1: ["I think it is fine.", "```json\n{\"Relevance\": 5", VALID.replace("1}", "5}")],
        2: ["no idea"],
    })
    report = judge_answers(engine, items, _templates("en"),
                           lambda i, attempt: SamplingParams(temperature=0.0, max_new_tokens=64, seed=i * 100 + attempt),
                           max_attempts=3)
    # waves: 3 requests, then the 2 unparsed, then the 2 still unparsed
    assert [len(c) for c in engine.calls] == [3, 2, 2]
    assert [r.params.seed for r in engine.calls[1]] == [101, 201]
    assert all(r.adapter is None and r.messages[-1][0] == "user" for c in engine.calls for r in c)
    assert report.verdicts[0] == EXPECTED and report.scores[0] == pytest.approx(50.0)
    # 5,4,3,3,2,5 -> (100 + 75 + 50 + 50 + 25 + 100) / 6
    assert report.scores[1] == pytest.approx(400 / 6)
    assert report.verdicts[2] is None and report.scores[2] is None
    assert (report.requests, report.unparseable, report.failed, report.attempts) == (7, 5, 1, [1, 3, 3])
    assert report.replies == [VALID, VALID.replace("1}", "5}"), "no idea"]
    assert report.mean_s_q == pytest.approx((50.0 + 400 / 6) / 2)
    summary = report.summary()
    assert summary["judged"] == 2 and summary["failed"] == 1 and summary["unparseable"] == 5
    assert summary["s_q_relevance"] == 100.0 and summary["s_q_reading_experience"] == pytest.approx(50.0)


def test_judge_answers_never_crashes_on_any_reply():
    items = [{"instruction": "x", "answer": "y"}] * 2
    engine = ScriptedEngine({0: [""], 1: ["{not json"]})
    report = judge_answers(engine, items, _templates("zh"), lambda i, a: SamplingParams(seed=a), max_attempts=2)
    assert report.failed == 2 and report.unparseable == 4 and report.mean_s_q is None
    assert report.dimension_means() == {d: None for d in DIMENSIONS}
    empty = judge_answers(engine, [], _templates("en"), lambda i, a: SamplingParams(), max_attempts=1)
    assert (empty.requests, empty.failed, empty.mean_s_q) == (0, 0, None)
    with pytest.raises(ValueError):
        judge_answers(engine, items, _templates("en"), lambda i, a: SamplingParams(), max_attempts=0)


# --- the real embedded model as judge ---------------------------------------------------------------------

@pytest.mark.slow
def test_judge_answers_with_the_embedded_model(tmp_path):
    from selflengthen.engines.transformers_engine import TransformersEngine
    from selflengthen.engines.models import resolve_model_path

    engine = TransformersEngine(resolve_model_path("embedded:smollm2-135m", None), batch_size=2)
    engine.load()
    try:
        items = [
            {"instruction": "Write a short note about why bridges need regular inspection.",
             "answer": "Bridges carry heavy loads every day. Regular inspection finds cracks and corrosion early, "
                       "before they become dangerous, and keeps repairs cheap."},
            {"instruction": "Describe a quiet morning in a small village.",
             "answer": "The village woke slowly. Smoke rose from a few chimneys, a dog crossed the square, and "
                       "the baker opened his shutters as the church bell rang seven."},
        ]
        report = judge_answers(engine, items, _templates("en"),
                               lambda i, a: SamplingParams(max_new_tokens=96, seed=1000 * i + a), max_attempts=2)
    finally:
        engine.close()
    assert len(report.scores) == 2 and report.requests >= 2
    for verdict, score, attempts in zip(report.verdicts, report.scores, report.attempts):
        assert 1 <= attempts <= 2
        if score is None:
            assert verdict is None
        else:
            assert 0.0 <= score <= 100.0 and set(verdict) == set(DIMENSIONS)
    assert report.failed == sum(s is None for s in report.scores)
    assert report.unparseable >= report.failed * 2
    print("embedded judge:", report.summary(), report.attempts, [r[:200] for r in report.replies])
