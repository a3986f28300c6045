"""eval.prompt_file takes LongBench-Write's and LonGen's files as published (selflengthen/evidence/benchmarks.py):
the format is detected from the fields, LonGen's constraint text is read in English and Chinese, and each
file is scored with its own benchmark's word count — checked against values computed by hand from the
papers' formulas, on made-up rows in each format."""

from __future__ import annotations

import json

import pytest

from conftest import fake_settings
from selflengthen.evidence import benchmarks as B
from selflengthen.engines import session
from selflengthen.evidence import heldout
from selflengthen.writing.length_control import Constraint
from selflengthen.settings import ConfigError
from selflengthen.writing.text import count_words

# made-up rows, in each benchmark's published shape
LBW = [{"prompt": "Write a 100-word thank you email to a bank teller.", "type": "Functional Writing", "length": 100},
       {"prompt": "对于雷锋精神的推文，200字以内", "type": "Community Forum", "length": 200}]
LONGEN = [{"language": "en", "range": "2-4k", "type": "about", "constraint": "around 2000 words",
           "query": "Write an essay on city parks. Around 2000 words."},
          {"language": "zh", "range": "4-6k", "type": "range", "constraint": "4000字至5000字",
           "query": "请写一篇关于城市交通的文章，4000字至5000字。"}]
# the answers, and what each benchmark's own counter makes of them
TEXTS = ["word " * 80 + "2024 !!!",          # LongBench-Write: 80 (digits are no word); ours: 81
         "雷" * 150 + "，。AI",                # LongBench-Write: 150 Han + 1 ASCII word = 151
         "word " * 2500,                       # LonGen: 2500
         "交" * 3000 + "。" * 100]              # LonGen: 3000 Han + 100 CJK marks = 3100; ours: 3000


class Scripted(session.LazyEngine):
    """Answers the i-th request of a wave with TEXTS[i]."""

    def __init__(self, texts):
        super().__init__({"name": "fake"}, lambda: "fake-model")
        self.texts = texts

    def generate(self, requests, progress=None):
        return [self.texts[int(r.id.rsplit(".", 1)[1])] for r in requests]

    def stream(self, queue):  # the eval reads completions (text and finish reason) from the stream
        from selflengthen.engines.base import Completion

        for r in queue.take():
            yield Completion(r.id, self.texts[int(r.id.rsplit(".", 1)[1])])


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_each_benchmark_counts_words_its_own_way():
    assert B.count_words_longbench(TEXTS[0]) == 80 and count_words(TEXTS[0]) == 81
    assert B.count_words_longbench(TEXTS[1]) == 151
    assert B.count_words_longen(TEXTS[2]) == 2500
    assert B.count_words_longen(TEXTS[3]) == 3100 and count_words(TEXTS[3]) == 3000


@pytest.mark.parametrize("text,kind,numbers", [
    ("around 2000 words", "about", (2000,)), ("大约2000字", "about", (2000,)), ("约1,500字左右", "about", (1500,)),
    ("2000-3000 words", "range", (2000, 3000)), ("4000字至5000字", "range", (4000, 5000)),
    ("between 800 and 1200 words", "range", (800, 1200)), ("6000-8000", "range", (6000, 8000)),
    ("more than 3000 words", "above", (3000,)), ("大于4000字", "above", (4000,)), ("不少于500字", "above", (500,)),
    ("no less than 700 words", "above", (700,)),
    ("less than 1500 words", "below", (1500,)), ("小于5000字", "below", (5000,)), ("no more than 900 words", "below", (900,)),
    ("300字以内", "below", (300,)),
])
def test_longen_constraints_read_in_english_and_chinese(text, kind, numbers):
    c = B.parse_constraint(text)
    assert c.kind == kind
    assert ((c.low, c.high) if kind == "range" else (c.target,)) == numbers


def test_formats_are_detected_from_the_fields():
    assert B.detect(LBW[0]) == B.LONGBENCH_WRITE and B.detect(LONGEN[0]) == B.LONGEN
    assert B.detect({"prompt": "x", "type": "about", "target": 300}) == B.OURS
    assert B.detect({"prompt": "x"}) == B.OURS


def test_an_eval_on_each_benchmark_file_gives_hand_computed_scores(tmp_path):
    for name, rows, texts, fmt, want in [
        ("lbw.jsonl", LBW, TEXTS[:2], "longbench-write", [
            # S_l = 100 * (1 - (L/g - 1) / 2) below L; the length score reads L as "about L": band [0.8L, 1.2L]
            dict(words=80, s_l=100 * (1 - (100 / 80 - 1) / 2), length_score=1.0),                 # 87.5
            dict(words=151, s_l=100 * (1 - (200 / 151 - 1) / 2), length_score=2 * 151 / 160 - 1)]),  # 83.77, 0.8875
        ("longen.jsonl", LONGEN, TEXTS[2:], "longen", [
            # about 2000: band [1600, 2400]; 2500 is above: 3 - 2g/hi; S_l above L: 100 * (1 - (g/L - 1) / 3)
            dict(words=2500, s_l=100 * (1 - (2500 / 2000 - 1) / 3), length_score=3 - 2 * 2500 / 2400),  # 91.67, 0.9167
            # range 4000-5000: 3100 below: 2g/lo - 1; S_l against the midpoint 4500
            dict(words=3100, s_l=100 * (1 - (4500 / 3100 - 1) / 2), length_score=2 * 3100 / 4000 - 1)]),  # 77.42, 0.55
    ]:
        path = _jsonl(tmp_path / name, rows)
        s = fake_settings(tmp_path / f"run_{fmt}", f"eval.prompt_file={path}")
        doc = heldout.evaluate_round(s, Scripted(texts), 0, {})
        assert doc["prompt_format"] == fmt
        for row, expect, raw in zip(doc["rows"], want, rows):
            assert row["words"] == expect["words"]
            assert row["s_l"] == pytest.approx(expect["s_l"]) and row["length_score"] == pytest.approx(expect["length_score"])
            assert row["format"] == fmt and row["counting"] == fmt
            assert row["benchmark"]["type"] == raw["type"]  # the benchmark's own fields are kept
        assert doc["s_l"] == pytest.approx(sum(w["s_l"] for w in want) / 2)
        assert doc["length_score"] == pytest.approx(sum(w["length_score"] for w in want) / 2)
        assert doc["constrained"]["n"] == 2 and doc["open"]["n"] == 0


def test_our_own_format_is_read_as_before(tmp_path):
    path = _jsonl(tmp_path / "ours.jsonl", [{"prompt": "Write about rivers.", "type": "about", "target": 300},
                                            {"prompt": "Write a long story."}])
    rows = heldout.load_prompts(path)
    assert rows == [{"prompt": "Write about rivers.", "type": "about", "target": 300},
                    {"prompt": "Write a long story.", "type": "none"}]
    assert heldout.prompt_format(rows) == "selflengthen"


@pytest.mark.parametrize("rows,why", [
    ([{**LONGEN[0], "constraint": "as long as you like"}], "no number"),
    ([{**LONGEN[0], "type": "below"}], "reads as 'about'"),
    ([{**LONGEN[0], "constraint": "around words 2000", "type": "range"}], "reads as"),
    ([{**LBW[0], "length": -5}], "positive whole number"),
    ([LONGEN[0], LBW[0]], "file starts in the longen format"),
    ([{**LONGEN[0], "query": "  "}], "\"query\""),
])
def test_a_broken_benchmark_row_names_its_line_and_the_field(tmp_path, rows, why):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError) as err:
        heldout.load_prompts(path)
    assert why in str(err.value) and "line" in str(err.value) and "Fix:" in str(err.value)
