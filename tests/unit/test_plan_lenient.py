"""plan.default_words and plan.prefill: small models drop the word counts and the format; both are opt-in."""

from __future__ import annotations

import pytest

from selflengthen.methods.agentwrite_plans import parse_plan, plan_prefix

NO_COUNTS = "Paragraph 1 - Main Point: The keeper's journey.\n\nParagraph 2 - Main Point: The storm and the rescue."


def test_a_step_without_a_count_gets_the_default_only_when_asked():
    assert parse_plan(NO_COUNTS, 4, 20, 100).reason == "plan_unparseable"  # the original's rule by default
    r = parse_plan(NO_COUNTS, 4, 20, 100, default_words=60)
    assert r.ok and [(s.n, s.point, s.words) for s in r.steps] == [(1, "The keeper's journey.", 60),
                                                                   (2, "The storm and the rescue.", 60)]
    mixed = "Paragraph 1 - Main Point: Intro - Word Count: 80 words\nParagraph 2 - Main Point: More"
    assert [s.words for s in parse_plan(mixed, 4, 20, 100, default_words=60).steps] == [80, 60]


def test_a_malformed_count_is_still_unparseable():
    bad = "Paragraph 1 - Main Point: [recap] - Word Count: [30 words] - Length: [60 words]"
    assert parse_plan(bad, 4, 20, 100, default_words=60).reason == "plan_unparseable"
    assert parse_plan("Paragraph 1 - Main Point:   ", 4, 20, 100, default_words=60).reason == "plan_unparseable"


@pytest.mark.parametrize("lang,prefix", [("en", "Paragraph 1 - Main Point: "), ("zh", "段落1 - 要点：")])
def test_prefix_is_the_first_header_of_the_templates(lang, prefix):
    from conftest import compose
    from selflengthen.support.checks import as_dict

    tpl = as_dict(compose(f"prompts={lang}").prompts)["agentwrite"]
    assert plan_prefix(tpl) == prefix


def test_default_words_must_lie_in_the_bounds(tmp_path):
    from conftest import fake_settings
    from selflengthen.support.checks import ConfigError

    with pytest.raises(ConfigError, match="plan.default_words"):
        fake_settings(tmp_path, "method=agentwrite", "plan.default_words=5")


def test_prefill_puts_the_header_in_front_of_the_answer(tmp_path):
    from conftest import fake_settings
    from selflengthen.methods.base import load_method
    from selflengthen.stages import plan
    from selflengthen.stages.common import RoundContext
    from selflengthen.runfolder.store import atomic_write_jsonl, read_jsonl

    class Small:
        requests: list = []

        def generate(self, requests, progress=None):
            Small.requests += requests
            return ["The keeper's journey.\nParagraph 2 - Main Point: The storm."] * len(requests)

    s = fake_settings(tmp_path / "run", "method=agentwrite", "plan.prefill=true", "plan.default_words=300")
    ctx = RoundContext(s, 1, Small(), {"writer": None}, method=load_method("agentwrite"))
    atomic_write_jsonl(ctx.stage_dir("self_instruct") / "instructions.jsonl", [{"id": "i0", "prompt": "Write."}])
    assert plan.run(ctx)["planned"] == 1
    assert Small.requests[0].assistant_prefix == "Paragraph 1 - Main Point: "
    row = read_jsonl(ctx.stage_dir("plan") / "plans.jsonl")[0]
    assert [st["point"] for st in row["steps"]] == ["The keeper's journey.", "The storm."]
    assert read_jsonl(ctx.stage_dir("plan") / "attempts.jsonl")[0]["text"].startswith("Paragraph 1 - Main Point: The")
