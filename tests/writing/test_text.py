"""Word counting and paragraph splitting (selflengthen.writing.text)."""

from __future__ import annotations

import random

import pytest

from selflengthen.writing.text import _count_words_unicode, count_words, split_paragraphs


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", 0),
        ("   \n\t ", 0),
        ("The quick brown fox jumps.", 5),
        ("Hello,   world!\nSecond line here.", 5),
        ("don't stop e-mail 3.14", 4),  # punctuation inside a token keeps it one word
        ("Hello - world ... !", 2),  # punctuation-only tokens are not words
        ("我爱北京天安门", 7),  # each CJK character is a word
        ("我爱北京。天安门！", 7),  # CJK punctuation is no word
        ("他说：“你好。”", 4),  # nor are quotes left between CJK characters
        ("abc中文def", 4),  # abc, 中, 文, def
        ("中文。English text", 4),
        ("使用 Python 3 和 GPT-4o 写代码", 9),  # 6 CJK characters + Python, 3, GPT-4o
        ("ひらがな カタカナ 한국어", 11),  # kana and Hangul count per character
        ("丽 𠀀", 2),  # compatibility ideograph and extension B
        ("ｆｕｌｌ，ｗｉｄｔｈ", 2),  # full-width comma separates, full-width letters form words
        ("Café naïve résumé.", 3),
    ],
)
def test_count_words(text, expected):
    assert count_words(text) == expected


def test_ascii_fast_path_agrees_with_unicode_path():
    rng = random.Random(7)
    alphabet = "ab1 _-.,!?'\"\t\n\x1c()"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert count_words(text) == _count_words_unicode(text), repr(text)


def test_split_paragraphs_on_blank_lines():
    text = "First para\nstill first.\n\n  \nSecond.\n\n\nThird.  \n"
    paragraphs, sep = split_paragraphs(text)
    assert paragraphs == ["First para\nstill first.", "Second.", "Third."]
    assert sep == "\n\n"
    assert sep.join(paragraphs).count("\n\n") == 2


def test_split_paragraphs_falls_back_to_lines():
    paragraphs, sep = split_paragraphs("one\ntwo\n\nthree\nfour")
    assert (paragraphs, sep) == (["one", "two", "three", "four"], "\n")
    paragraphs, sep = split_paragraphs("a\r\nb\r\nc")
    assert (paragraphs, sep) == (["a", "b", "c"], "\n")


def test_split_paragraphs_keeps_blank_split_when_lines_give_no_more():
    assert split_paragraphs("one\n\ntwo") == (["one", "two"], "\n\n")
    assert split_paragraphs("single paragraph") == (["single paragraph"], "\n\n")
    assert split_paragraphs("") == ([], "\n\n")
    assert split_paragraphs(" \n\n \n") == ([], "\n\n")
