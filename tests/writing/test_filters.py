"""The quality filter (selflengthen.writing.filters): reasons, units, and the fast n-gram scan = the simple one."""

from __future__ import annotations

import random

import pytest

from selflengthen.writing.filters import (
    EN,
    ZH,
    FilterConfig,
    FilterResult,
    _has_repeated_ngram_fast,
    _has_repeated_ngram_simple,
    check,
    check_many,
)

_rng = random.Random(1234)
VOCAB = sorted({"".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(2, 9))) for _ in range(3000)})
HANZI = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]


def english(n_words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return rng.choices(VOCAB, k=n_words)


def chinese(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices(HANZI, k=n_chars))


# --------------------------------------------------------------------------------- basic reasons


def test_ok_english_text():
    assert check(" ".join(english(300, 0)) + ".", EN) == FilterResult(True, "")


def test_empty():
    assert check("", EN) == FilterResult(False, "empty")
    assert check(" \n\t ", ZH) == FilterResult(False, "empty")


# the paper's English set (llama/utils.py check_response) plus the typographic ” ’ …
@pytest.mark.parametrize("ending", [".", "!", "?", '."', ".'", ".”", "’", ".)", "…", ",", ";", ":", "-", "]", "}",
                                    ">", "`", "```", "..."])
def test_english_terminal_endings_pass(ending):
    assert check("It ends here" + ending + "  \n\n", EN).ok


@pytest.mark.parametrize("ending", ["", "*", "。", "a", "9", "#", "|"])
def test_english_bad_endings(ending):
    assert check("It ends here" + ending, EN) == FilterResult(False, "no_terminal_punctuation")


# the paper's Chinese set (qwen/utils.py check_response) plus 」』
@pytest.mark.parametrize("ending", ["。", "！", "？", "…", "”", "’", "」", "』", "）", "】", ")", "]", "}", ">", "`"])
def test_chinese_terminal_endings_pass(ending):
    assert check("这是一个句子" + ending + "\n", ZH).ok


@pytest.mark.parametrize("ending", ["", "，", "、", "：", "；", ".", "!", "?", '"', "字"])  # the paper's: no ASCII . ! ? "
def test_chinese_bad_endings(ending):
    assert check("这是一个句子" + ending, ZH) == FilterResult(False, "no_terminal_punctuation")


# ----------------------------------------------------------------------------------- meta words

BODY = "\n".join(" ".join(english(12, s)) + "." for s in range(10))


WORD = FilterConfig.from_dict({"language": "en", "meta_match": "word"})


# the paper (llama/utils.py): `word in part` over the first 2 / last 3 lines of the stripped text, as they are
@pytest.mark.parametrize(
    "text",
    [
        "Here is the revised essay.\n" + BODY,
        "Title\nA new version follows.\n" + BODY,  # second line
        BODY + "\nThis response covers it all.",
        BODY + "\nThe paragraph above explains.\n\nThanks.\n",  # third to last line (a blank one counts)
        "The unrevised draft.\n" + BODY,  # a substring is enough ...
        "Their responses vary widely.\n" + BODY,  # ... "response" inside "responses"
        BODY + "\nUnit conversion done.",  # "version" inside "conversion"
    ],
)
def test_meta_words_as_the_paper_matches_them(text):
    assert check(text, EN) == FilterResult(False, "meta_word")


@pytest.mark.parametrize(
    "text",
    [
        "One.\nTwo mentions nothing.\nThree mentions the revised plan.\n" + BODY,  # third line: not in the head
        "Title\n\nHere is the revised version.\n" + BODY,  # third line once the blank one is counted
        BODY + "\nA version here is fourth from last.\na.\nb.\nc.",  # not in the tail
        "Revised: a longer essay.\n" + BODY,  # case-sensitive: "Revised" is not "revised"
        "Responses vary widely.\n" + BODY,  # nor is "Response" "response"
    ],
)
def test_meta_words_elsewhere_or_capitalised_pass(text):
    assert check(text, EN).ok


@pytest.mark.parametrize(
    "text",
    [
        "Revised: a longer essay.\n" + BODY,
        "\n\nTitle\n\nHere is the REVISED version.\n" + BODY,  # second non-empty line, any case
        BODY + "\nThis response covers it all.",
        BODY + "\nThe paragraph above explains.\n\nThanks.\n",  # second to last non-empty line
        BODY + "\nThird from last mentions the Revision.\nx.\ny.",
    ],
)
def test_meta_words_whole_word_mode_rejects(text):
    assert check(text, WORD) == FilterResult(False, "meta_word")


@pytest.mark.parametrize(
    "text",
    [
        "One.\nTwo.\nThree mentions the revised plan.\n" + BODY,  # third line: not in the head
        BODY + "\nA version here is fourth from last.\na.\nb.\nc.",  # not in the tail
        "The unrevised draft.\n" + BODY,  # not a whole word
        "Responses vary widely.\n" + BODY,  # plural is a different word
        BODY + "\nUnit conversion done.",
    ],
)
def test_meta_words_whole_word_mode_passes(text):
    assert check(text, WORD).ok


def test_meta_match_is_checked():
    with pytest.raises(ValueError, match="meta_match"):
        FilterConfig.from_dict({"language": "en", "meta_match": "regex"})


def test_zh_has_no_meta_words_by_default_but_can_match_cjk_words():
    text = "修改后的版本如下。\n" + chinese(200, 1) + "。"
    assert check(text, ZH).ok
    cfg = FilterConfig.from_dict({"language": "zh", "meta_words": ["修改"]})
    assert check(text, cfg) == FilterResult(False, "meta_word")


# ------------------------------------------------------------------------------ repeated n-grams


def test_planted_english_10gram_is_rejected_and_9gram_passes():
    words = english(2000, 2)
    repeat10 = words[:500] + words[100:110] + words[500:]
    repeat9 = words[:500] + words[100:109] + words[500:]
    assert check(" ".join(repeat10) + ".", EN) == FilterResult(False, "repeated_10gram")
    assert check(" ".join(repeat9) + ".", EN).ok
    # Whitespace between the words does not matter; letter case and punctuation do.
    spaced = words[:500] + ["\n\n" + "  ".join(words[100:110]) + "\t"] + words[500:]
    assert check(" ".join(spaced) + ".", EN).reason == "repeated_10gram"
    shouted = words[:500] + [w.upper() for w in words[100:110]] + words[500:]
    assert check(" ".join(shouted) + ".", EN).ok


def test_planted_chinese_13gram_counts_an_ascii_run_as_one_unit():
    base = chinese(1500, 3)
    gram = "数据Python3处理，很重要的事情啊"  # 数 据 Python3 处 理 ， 很 重 要 的 事 情 啊 = 13 units
    twelve = "数据Python3处理，很重要的事情"
    assert check(base[:400] + gram + base[400:900] + gram + base[900:] + "。", ZH) == FilterResult(
        False, "repeated_13gram"
    )
    assert check(base[:400] + twelve + base[400:900] + twelve + base[900:] + "。", ZH).ok
    # Spaces around ASCII runs are not units.
    spaced = "数据 Python3 处理，很重要的事情啊"
    assert not check(base[:400] + gram + base[400:900] + spaced + base[900:] + "。", ZH).ok


def test_repeat_reason_follows_config():
    cfg = FilterConfig.from_dict({"ngram": 5})
    assert check("a b c d e f a b c d e g.", cfg) == FilterResult(False, "repeated_5gram")
    assert check("a b c d e f a b c d x g.", cfg).ok


def _random_text(rng: random.Random, unit: str) -> str:
    """Small alphabets, long and near-identical tokens, odd whitespace: collision-prone inputs."""
    kind = rng.randrange(4)
    if unit == "zh":
        pool = ["数", "据", "很", "。", "ab", "ab1", "x", "\u3000", " ", "\xa0", "𠀀", "é"]
    elif kind == 0:
        pool = ["a", "b", "c", "aa", "ab", "ba"]
    elif kind == 1:  # > 16 bytes, same first/last 8 bytes and length: identical unit keys
        pool = ["aaaaaaaaXbbbbbbbb", "aaaaaaaaYbbbbbbbb", "aaaaaaaaZbbbbbbbb", "q"]
    elif kind == 2:
        pool = ["x" * 8, "x" * 9, "x" * 16, "x" * 17, "y", "中文", "é"]
    else:
        pool = VOCAB[:30]
    seps = [" ", " ", "\n", "\t", "  ", "\u3000", "\x1c", "\x00"]
    parts = []
    for _ in range(rng.randint(0, 120)):
        parts.append(rng.choice(pool))
        parts.append(rng.choice(seps) if unit == "word" else rng.choice(["", "", " "]))
    return "".join(parts)


@pytest.mark.parametrize("unit", ["word", "zh"])
def test_fast_ngram_scan_agrees_with_simple(unit):
    rng = random.Random(99)
    for trial in range(1500):
        text = _random_text(rng, unit)
        n = rng.choice([1, 2, 3, 5, 10, 13])
        expected = _has_repeated_ngram_simple(text, n, unit)
        assert _has_repeated_ngram_fast(text, n, unit) == expected, (trial, text, n)
        # Truncated hashes collide constantly: the exact confirmation must still get it right.
        assert _has_repeated_ngram_fast(text, n, unit, hash_bits=3) == expected, (trial, text, n)


def test_fast_ngram_scan_agrees_on_long_texts_with_planted_repeats():
    rng = random.Random(5)
    for seed in range(40):
        words = english(rng.randint(50, 3000), seed)
        if seed % 2:
            i, j = sorted(rng.sample(range(len(words)), 2))
            words = words[:j] + words[i : i + 10] + words[j:]
        text = " ".join(words)
        expected = _has_repeated_ngram_simple(text, 10)
        assert expected == bool(seed % 2)
        assert _has_repeated_ngram_fast(text, 10) == expected
        assert _has_repeated_ngram_fast(text, 10, hash_bits=8) == expected


# ------------------------------------------------------------------------------- config, streaming


def test_config_from_dict_and_validation():
    assert FilterConfig.from_dict({}) == EN
    assert FilterConfig.from_dict({"language": "zh"}) == ZH
    cfg = FilterConfig.from_dict({"language": "en", "ngram": 8, "meta_words": ["draft"], "terminal": "."})
    assert (cfg.ngram, cfg.meta_words, cfg.terminal, cfg.ngram_unit) == (8, ("draft",), ".", "word")
    with pytest.raises(ValueError, match="unknown filter keys"):
        FilterConfig.from_dict({"ngrams": 8})
    with pytest.raises(ValueError, match="language"):
        FilterConfig.from_dict({"language": "fr"})
    with pytest.raises(ValueError, match="ngram_unit"):
        FilterConfig(ngram_unit="char")
    with pytest.raises(ValueError, match="ngram"):
        FilterConfig(ngram=0)
    with pytest.raises(TypeError, match="meta_words"):
        FilterConfig(meta_words="revised")


def test_min_words():
    cfg = FilterConfig.from_dict({"min_words": 5})
    assert check("Too short.", cfg) == FilterResult(False, "too_short")
    assert check("This one has five words.", cfg).ok


def test_check_many_streams_in_order_with_and_without_workers():
    texts = [" ".join(english(200, s)) + ("." if s % 3 else "*") for s in range(300)]
    expected = [check(t, EN) for t in texts]
    assert [r.ok for r in expected].count(False) == 100
    assert list(check_many(iter(texts), EN)) == expected
    assert list(check_many((t for t in texts), EN, workers=2, chunksize=7)) == expected
    assert list(check_many([], EN, workers=2)) == []


