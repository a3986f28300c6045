"""Text measures the method relies on: word counting and paragraph splitting.

Owns two definitions that every stage must agree on:

- **What a word is** (`count_words`): each CJK character (Han ideographs incl. extensions and
  compatibility ideographs, Hiragana, Katakana, Hangul) is one word; the rest of the text is cut on
  whitespace and on CJK/full-width punctuation, and every resulting token that holds at least one letter
  or digit is one word. So "abc中文def" is 4 words (abc, 中, 文, def), "中文。English text" is 4, and a
  lone "-" or "…" is none. The paper's counter differs in two details, on purpose: it counts each
  CJK punctuation mark as a word and a stray punctuation token as a word, which inflates Chinese lengths.
- **What a paragraph is** (`split_paragraphs`): pieces between blank lines, or single lines when the
  text has too few blank lines to be split that way (DESIGN §3, two-stage extension).
"""

from __future__ import annotations

import re

# Characters that are one word each (see module docstring).
_CJK_CHARS = (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK Unified Ideographs extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9d"  # half-width Katakana
    "\U00020000-\U0002fa1f"  # extensions B-F and compatibility supplement
)
# CJK and full-width punctuation: separates tokens like whitespace, is no word itself.
_CJK_PUNCT = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"

_CJK_RUNS_RE = re.compile(f"[{_CJK_CHARS}]+")  # runs, not chars: one match per run is much faster
_CJK_OR_PUNCT_RE = re.compile(f"[{_CJK_CHARS}{_CJK_PUNCT}]+")
_HAS_ALNUM_RE = re.compile(r"[^\W_]")  # a letter or digit, any script
# ASCII punctuation is deleted before splitting, so punctuation-only tokens vanish.
_ASCII_PUNCT = bytes(c for c in range(33, 127) if not chr(c).isalnum())
_ASCII_WS = bytes.maketrans(b"\x1c\x1d\x1e\x1f", b"    ")  # str.split() whitespace bytes.split() lacks

_BLANK_LINES_RE = re.compile(r"\n(?:[^\S\n]*\n)+")  # a line break, then whitespace-only lines


def count_words(text: str) -> int:
    """Number of words in `text`: CJK characters one each, plus tokens with a letter or digit."""
    if text.isascii():
        # Fast path (most responses): bytes ops in C, no per-token Python work.
        return len(text.encode("ascii").translate(_ASCII_WS, _ASCII_PUNCT).split())
    return _count_words_unicode(text)


def _count_words_unicode(text: str) -> int:
    n_cjk = sum(map(len, _CJK_RUNS_RE.findall(text)))
    rest = _CJK_OR_PUNCT_RE.sub(" ", text)
    return n_cjk + sum(1 for token in rest.split() if _HAS_ALNUM_RE.search(token))


def split_paragraphs(text: str) -> tuple[list[str], str]:
    """Split `text` into stripped, non-empty paragraphs; returns (paragraphs, separator to rejoin).

    Paragraphs are separated by one or more blank (empty or whitespace-only) lines. When that gives at
    most two paragraphs and single newlines give more, the single lines are the paragraphs instead:
    models often write one paragraph per line, and extension needs something to halve.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = [p.strip() for p in _BLANK_LINES_RE.split(text)]
    paragraphs = [p for p in paragraphs if p]
    if len(paragraphs) <= 2:
        lines = [line.strip() for line in text.split("\n")]
        lines = [line for line in lines if line]
        if len(lines) > len(paragraphs):
            return lines, "\n"
    return paragraphs, "\n\n"
