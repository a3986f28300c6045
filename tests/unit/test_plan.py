"""selflengthen.methods.agentwrite_plans: plan parsing and its rejection reasons, write-step prompts, cleaning and joining."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from selflengthen.methods.agentwrite_plans import (PLAN_REASONS, PlanStep, clean_step, join_steps, parse_plan, plan_messages,
                               render_plan, write_messages)

PROMPTS = Path(__file__).resolve().parents[2] / "selflengthen" / "conf" / "prompts"

EN_PLAN = """Here is the plan:

Paragraph 1 - Main Point: Introduce the city and why its traffic matters. - Word Count: 300 words
Paragraph 2 - Main Point: Describe the metro, its lines and ridership - Word Count: 500 words
Paragraph 3 - Main Point: Conclude with three recommendations. - Word Count: 250 words

I hope this helps!"""


def _templates(lang: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(PROMPTS / f"{lang}.yaml"))["agentwrite"]


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


# --- parse_plan -------------------------------------------------------------------------------------------

def test_parses_the_canonical_format_and_ignores_prose_around_it():
    r = parse_plan(EN_PLAN, max_steps=50, min_words=200, max_words=1000)
    assert r.ok and r.reason == ""
    assert r.steps == (PlanStep(1, "Introduce the city and why its traffic matters.", 300),
                       PlanStep(2, "Describe the metro, its lines and ridership", 500),
                       PlanStep(3, "Conclude with three recommendations.", 250))
    assert r.total_words == 1050


@pytest.mark.parametrize("line, point, words", [
    ("paragraph 1 - main point: Open with a scene - word count: 300", "Open with a scene", 300),
    ("Paragraph 1: Main point: Open with a scene; Word count: 300 words.", "Open with a scene", 300),
    ("**Paragraph 1** - **Main Point**: Open with a scene - **Word Count**: 300 words", "Open with a scene", 300),
    ("- Paragraph 1 - Main Point: Open with a scene - Word Count: 1,000 words", "Open with a scene", 1000),
    ("1. Paragraph 1 – Main Point – Open with a scene – Word Count – about 300 words", "Open with a scene", 300),
    ("Paragraph 1 - Main Point: Open with a scene - Word Count: 300-400 words", "Open with a scene", 350),
    ("Paragraph 1 - Main Point: A well-known, long-awaited scene - Word Count: 300 words",
     "A well-known, long-awaited scene", 300),
    ("段落1 - 要点：介绍城市交通的现状。 - 字数：300字", "介绍城市交通的现状。", 300),
    ("段落 1 - 要点: 介绍城市交通的现状 - 字数: 300 字", "介绍城市交通的现状", 300),
])
def test_tolerated_variations(line, point, words):
    r = parse_plan(line, max_steps=5, min_words=100, max_words=1000)
    assert r.ok, r.reason
    assert r.steps == (PlanStep(1, point, words),)


@pytest.mark.parametrize("text, reason", [
    ("", "plan_empty"),
    ("  \n\t\n", "plan_empty"),
    ("I will write an essay about traffic.", "plan_unparseable"),
    # a step header that does not parse (no word count) rejects the plan instead of dropping the step
    ("Paragraph 1 - Main Point: Intro - Word Count: 300 words\nParagraph 2 - Main Point: Body", "plan_unparseable"),
    ("Paragraph 1 - Main Point: - Word Count: 300 words", "plan_unparseable"),
    ("Paragraph 1 - Main Point: Intro - Word Count: many words", "plan_unparseable"),
    ("Paragraph 2 - Main Point: Intro - Word Count: 300 words", "plan_misnumbered"),
    ("Paragraph 1 - Main Point: A - Word Count: 300 words\nParagraph 3 - Main Point: B - Word Count: 300 words",
     "plan_misnumbered"),
    # the plan written twice: a restart at 1 is rejected, not glued into a six-step plan
    ("\n".join(f"Paragraph {n} - Main Point: P{n} - Word Count: 300 words" for n in (1, 2, 3, 1, 2, 3)),
     "plan_misnumbered"),
    ("Paragraph 1 - Main Point: A - Word Count: 150 words", "plan_word_count_out_of_bounds"),
    ("Paragraph 1 - Main Point: A - Word Count: 1001 words", "plan_word_count_out_of_bounds"),
])
def test_rejections_name_their_reason(text, reason):
    r = parse_plan(text, max_steps=50, min_words=200, max_words=1000)
    assert (r.ok, r.reason, r.steps) == (False, reason, ())
    assert reason in PLAN_REASONS


def test_too_many_steps_and_the_bounds_are_inclusive():
    plan = "\n".join(f"Paragraph {n} - Main Point: P{n} - Word Count: {200 if n % 2 else 1000} words"
                     for n in range(1, 51))
    assert parse_plan(plan, max_steps=50, min_words=200, max_words=1000).ok
    assert parse_plan(plan, max_steps=49, min_words=200, max_words=1000).reason == "plan_too_many_steps"
    assert parse_plan(plan, max_steps=50, min_words=201, max_words=1000).reason == "plan_word_count_out_of_bounds"


def test_bad_bounds_are_a_programming_error():
    with pytest.raises(ValueError):
        parse_plan(EN_PLAN, max_steps=0)
    with pytest.raises(ValueError):
        parse_plan(EN_PLAN, min_words=500, max_words=400)


# --- prompts ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "zh"])
def test_shipped_templates_have_the_placeholders_the_code_fills(lang):
    t = _templates(lang)
    assert _fields(t["plan"]) == {"instruction", "max_steps", "min_words", "max_words"}
    assert _fields(t["step_line"]) == {"n", "point", "words"}
    assert _fields(t["write"]) == {"instruction", "plan", "written", "step", "words"}
    assert not _fields(t["nothing_written"])
    assert t["system"] is None or not _fields(t["system"])


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_rendered_plan_parses_back_to_the_same_steps(lang):
    steps = (PlanStep(1, "Open with a scene", 300), PlanStep(2, "Explain the stakes", 450))
    r = parse_plan(render_plan(_templates(lang), steps), max_steps=5, min_words=200, max_words=1000)
    assert r.ok and r.steps == steps


def test_plan_messages_show_the_instruction_and_the_bounds():
    msgs = plan_messages(_templates("en"), "Write about bridges.", max_steps=12, min_words=150, max_words=900)
    assert [role for role, _ in msgs] == ["user"]
    user = msgs[0][1]
    assert "Write about bridges." in user and "12" in user and "150" in user and "900" in user
    msgs = plan_messages({**_templates("en"), "system": "You plan."}, "x", 5, 200, 1000)
    assert msgs[0] == ("system", "You plan.")


def test_write_messages_give_instruction_plan_text_so_far_and_the_step():
    t = _templates("en")
    steps = parse_plan(EN_PLAN).steps
    first = write_messages(t, "Write about traffic.", steps, [], 0)[-1][1]
    assert "Write about traffic." in first and t["nothing_written"] in first
    for s in steps:  # the whole plan, canonically rendered
        assert f"Paragraph {s.n} - Main Point: {s.point} - Word Count: {s.words} words" in first

    user = write_messages(t, "Write about traffic.", steps, ["First paragraph.", "Second paragraph."], 2)[-1][1]
    assert "First paragraph.\n\nSecond paragraph." in user and t["nothing_written"] not in user
    assert "write this part of the plan:\nParagraph 3 - Main Point: Conclude with three recommendations." in user
    assert "about 250 words" in user
    with pytest.raises(IndexError):
        write_messages(t, "x", steps, [], 3)


def test_write_messages_in_chinese():
    t = _templates("zh")
    steps = (PlanStep(1, "介绍现状", 300), PlanStep(2, "提出建议", 400))
    user = write_messages(t, "写一篇关于交通的文章。", steps, ["第一段。"], 1)[-1][1]
    assert "段落2 - 要点：提出建议 - 字数：400字" in user and "第一段。" in user and "约400字" in user


# --- clean_step and join_steps ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    "The metro opened in 1995.",
    "Paragraph 2:\nThe metro opened in 1995.",
    "**Paragraph 2**\n\nThe metro opened in 1995.",
    "## Paragraph 2 - Main Point: Describe the metro - Word Count: 500 words\nThe metro opened in 1995.",
    "Paragraph 2 - The metro\n\nThe metro opened in 1995.\n\n(Word count: 312)",
    "The metro opened in 1995.\nWord count: 500 words",
    "The metro opened in 1995.\n\nParagraph 3 - Main Point: Conclude\nIn conclusion, ...",
    "  \n\nThe metro opened in 1995.  \n\n",
])
def test_clean_step_strips_what_models_echo(raw):
    assert clean_step(raw) == "The metro opened in 1995."


def test_clean_step_keeps_the_paragraph_itself():
    text = "Paragraph 2 of the treaty was signed first.\n\nThen came the rest, with 300 words of annexes."
    assert clean_step(text) == text
    assert clean_step("段落2：\n地铁于1995年开通。\n\n字数：300字") == "地铁于1995年开通。"
    assert clean_step("Paragraph 2:") == ""


def test_join_steps_separates_paragraphs_with_one_blank_line():
    assert join_steps(["  One.\n", "", "Two.", "   ", "Three."]) == "One.\n\nTwo.\n\nThree."
    assert join_steps([]) == ""
