"""`repair`: chatter lines and a closing loop are cut off before the filter judges (filters.repair)."""

from __future__ import annotations

from conftest import fake_settings
from selflengthen import engine_session, recipe
from selflengthen.engines.fake import FakeEngine
from selflengthen.filters import EN, ZH, check, cut_at_repeat, repair, trim_meta_edges
from selflengthen.stages import extend
from selflengthen.stages.common import RoundContext, preparer
from selflengthen.stages.initial import Generate

BODY = ("The harbour opened in May.\n\nShips came from the north with salt and timber.\n\n"
        "By June the quay was full, and the town grew along the water.")


def test_trim_meta_edges_drops_the_chatter_and_keeps_the_body():
    wrapped = f"Sure!\nHere is the revised version of your story:\n\n{BODY}\n\nI hope this response helps.\nEnjoy!"
    assert not check(wrapped, EN).ok and check(wrapped, EN).reason == "meta_word"
    assert trim_meta_edges(wrapped, EN) == BODY  # "Sure!" goes with the meta line below it, "Enjoy!" with the one above
    assert check(trim_meta_edges(wrapped, EN), EN).ok
    assert trim_meta_edges(BODY, EN) == BODY  # nothing to trim: unchanged
    # every meta line within the edge windows goes; a text that is all chatter becomes empty
    assert trim_meta_edges("Revised:\nThis version is better.\n\n" + BODY, EN) == BODY
    assert trim_meta_edges("My revised version.\nAnother version.", EN) == ""
    # a meta-word in the middle is none of the filter's business, nor of the trim
    middle = "\n\n".join([BODY, "A revised charter came in July.", "Autumn brought storms.", "Winter was quiet.", "Spring came late."])
    assert check(middle, EN).ok and trim_meta_edges(middle, EN) == middle
    # no meta-words configured (Chinese defaults): nothing is trimmed
    assert trim_meta_edges("版本如下：\n正文。", ZH) == "版本如下：\n正文。"


def test_cut_at_repeat_cuts_a_closing_loop_at_its_start():
    loop = " And the sea was calm and the night was long and the stars were out."
    looped = BODY + loop * 4
    assert check(looped, EN).reason == "repeated_10gram"
    cut = cut_at_repeat(looped, 10)
    assert check(cut, EN).ok and cut.startswith(BODY) and len(cut) < len(looped)
    assert cut.count("the stars were out") == 1  # the first round of the loop is not a repeat yet
    # a text that repeats early keeps too little: unchanged, so the filter still rejects it
    early = "Start." + loop * 6
    assert cut_at_repeat(early, 10) == early
    assert cut_at_repeat(BODY, 10) == BODY  # no repeat: unchanged
    # Chinese units
    zh = ("港口在五月开放，船只从北方驶来，带来了盐和木材。到了六月码头已经满了，城镇沿着水边发展起来。"
          "秋天的风暴把旧灯塔吹倒了，渔民们用一个冬天重新把它建好。")
    zh_loop = zh + "夜晚很长，海面平静，星星都出来了。" * 4
    zh_cut = cut_at_repeat(zh_loop, 13, "zh")
    assert zh_cut.startswith(zh) and check(zh_cut, ZH).ok and not check(zh_loop, ZH).ok


def test_repair_composes_both_and_the_preparer_applies_it_only_when_asked():
    text = "Here is my response:\n\n" + BODY + " And it went on and on and on and on and on." * 3 + "\n\nThis version is final."
    assert not check(text, EN).ok
    fixed = repair(text, EN)
    assert check(fixed, EN).ok and fixed.startswith("The harbour")
    # edges that are most of the text are not chatter around an answer: the whole goes to the filter
    short = "The version one of the plan.\n\nIt has two steps.\n\nThe revised version follows."
    assert repair(short, EN) == short and check(short, EN).reason == "meta_word"
    assert preparer(Generate(), EN)(text) == text.strip()
    assert preparer(Generate(repair=True), EN)(text) == fixed
    # trim_to_sentence first (a budget-cut ending), then the repair
    assert preparer(Generate(trim_to_sentence=True, repair=True), EN)(text + " And then the") == fixed


class Chatty(FakeEngine):
    """The fake extender, wrapping every answer in the talk a small model adds around a rewrite."""

    def _one(self, r):
        return f"Here is the revised version:\n\n{super()._one(r)}\n\nI hope this response helps."


def _extend_with(tmp_path, *overrides):
    s = fake_settings(tmp_path, "iterations=1", "extend.max_attempts=2", *overrides)
    recipe.run(s, engine_session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")
    (tmp_path / "round_001/extend/done.json").unlink()
    (tmp_path / "round_001/extend/passes.jsonl").unlink()
    return extend.run(RoundContext(s, 1, Chatty(), {"generator": None, "extender": None}))


def test_extension_with_repair_keeps_what_chatter_made_the_filter_reject(tmp_path):
    plain = _extend_with(tmp_path / "plain")
    assert plain["passed"] == 0 and set(plain["rejections"]) <= {"meta_word", "too_little_growth"}
    fixed = _extend_with(tmp_path / "repair", "extend.repair=true")
    assert fixed["passed"] > 0 and "meta_word" not in fixed["rejections"]
    rows = (tmp_path / "repair/round_001/extend/extended.jsonl").read_text()
    assert "revised" not in rows.lower().split('"text"')[1][:80]
