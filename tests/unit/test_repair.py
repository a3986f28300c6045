"""`repair`: chatter lines at the edges are cut off before the filter judges (filters.repair); nothing inside
the answer is ever cut (a loop stays, and the filter rejects it)."""

from __future__ import annotations

from conftest import fake_settings
from selflengthen import recipe
from selflengthen.engines import session
from selflengthen.engines.fake import FakeEngine
from selflengthen.writing.filters import EN, ZH, check, repair, trim_meta_edges
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


def test_repair_trims_edge_chatter_only_and_the_preparer_applies_it_only_when_asked():
    text = "Here is my response:\n\n" + BODY + "\n\nThis version is final."
    assert not check(text, EN).ok
    fixed = repair(text, EN)
    assert fixed == BODY and check(fixed, EN).ok
    # a loop is never cut out: the text keeps its end, and the filter rejects it
    looped = "Here is my response:\n\n" + BODY + " And it went on and on and on and on and on." * 3
    assert repair(looped, EN) == BODY + " And it went on and on and on and on and on." * 3
    assert check(repair(looped, EN), EN).reason == "repeated_10gram"
    # an unfinished sentence is not trimmed back either: the filter sees the cut end
    cut = BODY + " And then the"
    assert repair(cut, EN) == cut and not check(cut, EN).ok
    # edges that are most of the text are not chatter around an answer: the whole goes to the filter
    short = "The version one of the plan.\n\nIt has two steps.\n\nThe revised version follows."
    assert repair(short, EN) == short and check(short, EN).reason == "meta_word"
    assert preparer(Generate(), EN)(text) == text.strip()
    assert preparer(Generate(repair=True), EN)(text) == fixed


class Chatty(FakeEngine):
    """The fake extender, wrapping every answer in the talk a small model adds around a rewrite."""

    def _one(self, r):
        return f"Here is the revised version:\n\n{super()._one(r)}\n\nI hope this response helps."


def _extend_with(tmp_path, *overrides):
    s = fake_settings(tmp_path, "iterations=1", "extend.max_attempts=2", *overrides)
    recipe.run(s, session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")
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
