"""The per-response quality filter of DESIGN §3, as pure predicates that say why they reject.

`check(text, cfg)` returns `FilterResult(ok, reason)`; reasons are stable ids counted per round:

- `empty`                   nothing but whitespace;
- `too_short`               fewer than `cfg.min_words` words (only when `min_words` > 1);
- `no_terminal_punctuation` the last non-whitespace character is not in `cfg.terminal`;
- `meta_word`               a meta-word ("revised", "version", ...) in the first/last few lines (`meta_match`);
- `repeated_{n}gram`        some n units occur twice in a row-for-row identical sequence.

Units for the n-gram check (`cfg.ngram_unit`):
- `"word"`: whitespace-separated words (whitespace = `str.isspace()` characters, plus ASCII control
  characters, which no model should emit and which are treated as separators);
- `"zh"`:   a run of non-whitespace ASCII characters is one unit ("Python3", "GPT-4o,"), every other
  non-whitespace character is one unit. The paper's code also glues the spaces between ASCII words into
  one unit, which would make an English sentence inside Chinese text a single unit; here each ASCII word
  is a unit, so 13 units stay a comparable amount of text.

The repeated n-gram check runs on every sampled response, so it is vectorised: the UTF-8 bytes are
scanned with numpy for unit boundaries, each unit gets a 64-bit key from its first and last 8 bytes and
its length, n-grams get a polynomial hash of their unit keys, and a sort finds equal hashes. A hash hit is
then confirmed on the exact unit bytes, so the answer equals `_has_repeated_ngram_simple`, the plain
reference kept for tests.
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
from collections import deque
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Iterable, Iterator, Mapping

import numpy as np


@dataclass(frozen=True)
class FilterResult:
    """Keep (`ok`), or why not (`reason`, a stable id; "" when ok)."""

    ok: bool
    reason: str = ""


PASS = FilterResult(True)

# The paper's sets (utils.check_response). English: . ! ? , ; : - " ' ) ] } > ` (its "..." ends in "." anyway),
# plus the typographic forms ” ’ … of marks it has. Chinese: 。！？…”’）】 ) ] } > ` plus the corner-bracket
# closers 」』 (the same role as its 】）). Closing quotes and brackets count because a finished sentence often
# ends `."` or `.)`; the price is that an ending like `"word"` without a period also passes, as in the paper.
EN_TERMINAL = ".!?,;:-\"')]}>`”’…"
ZH_TERMINAL = "。！？…”’）】」』)]}>`"
EN_META_WORDS = ("revised", "revision", "response", "version", "paragraph")
NGRAM_UNITS = ("word", "zh")
# How a meta-word is matched. substring (the paper): case-sensitive substring of the first/last lines as they
# are, blank ones included ("conversion" contains "version"). word: case-insensitive whole word over
# non-empty lines ("Revised:" yes, "unrevised" no).
META_MATCHES = ("substring", "word")


@dataclass(frozen=True)
class FilterConfig:
    """Per-language filter settings; the defaults are the paper's English ones (same as `EN`)."""

    terminal: str = EN_TERMINAL  # characters a response may end with (trailing whitespace ignored)
    ngram: int = 10  # reject when any n consecutive units occur twice
    ngram_unit: str = "word"  # "word" or "zh" (see module docstring)
    meta_words: tuple[str, ...] = EN_META_WORDS  # matched as `meta_match` says
    meta_head_lines: int = 2  # meta-words are looked for in this many first lines ...
    meta_tail_lines: int = 3  # ... and this many last lines (non-empty ones with meta_match=word)
    min_words: int = 1  # fewer words (text.count_words) -> "too_short"; 0 or 1 -> only "empty"
    meta_match: str = "substring"  # see META_MATCHES

    def __post_init__(self) -> None:
        if isinstance(self.meta_words, str):
            raise TypeError(f"meta_words must be a list of words, got the string {self.meta_words!r}")
        object.__setattr__(self, "meta_words", tuple(str(w) for w in self.meta_words))
        if not isinstance(self.terminal, str) or not self.terminal:
            raise ValueError(f"terminal must be a non-empty string of characters, got {self.terminal!r}")
        if self.ngram_unit not in NGRAM_UNITS:
            raise ValueError(f"ngram_unit must be one of {NGRAM_UNITS}, got {self.ngram_unit!r}")
        if self.meta_match not in META_MATCHES:
            raise ValueError(f"meta_match must be one of {META_MATCHES}, got {self.meta_match!r}")
        for name in ("ngram", "meta_head_lines", "meta_tail_lines", "min_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "ngram" else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name == 'ngram' else 0}, got {value!r}")

    @property
    def repeat_reason(self) -> str:
        return f"repeated_{self.ngram}gram"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FilterConfig":
        """Build from a plain mapping (e.g. a Hydra node). `language: en|zh` picks the base defaults,
        the other keys override them; an unknown key is an error rather than a silently ignored typo."""
        d = dict(d)
        language = d.pop("language", "en")
        if language not in DEFAULTS:
            raise ValueError(f"filter language must be one of {sorted(DEFAULTS)}, got {language!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown filter keys {unknown}; known: {sorted(known | {'language'})}")
        base = DEFAULTS[language]
        return cls(**{name: d.get(name, getattr(base, name)) for name in sorted(known)})


EN = FilterConfig()
ZH = FilterConfig(terminal=ZH_TERMINAL, ngram=13, ngram_unit="zh", meta_words=())
DEFAULTS = {"en": EN, "zh": ZH}


# ---------------------------------------------------------------------------------------------- check


def check(text: str, cfg: FilterConfig = EN) -> FilterResult:
    """Apply the filter; cheap tests first, the n-gram scan last."""
    end = _last_non_space(text)
    if end < 0:
        return FilterResult(False, "empty")
    if cfg.min_words > 1:
        from selflengthen.writing.text import count_words

        if count_words(text) < cfg.min_words:
            return FilterResult(False, "too_short")
    if text[end] not in cfg.terminal:
        return FilterResult(False, "no_terminal_punctuation")
    if cfg.meta_words and _has_meta_word(text, cfg):
        return FilterResult(False, "meta_word")
    if has_repeated_ngram(text, cfg.ngram, cfg.ngram_unit):
        return FilterResult(False, cfg.repeat_reason)
    return PASS


def _last_non_space(text: str) -> int:
    i = len(text) - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    return i


# ------------------------------------------------------------------------------------------ meta-words


def _has_meta_word(text: str, cfg: FilterConfig) -> bool:
    if cfg.meta_match == "substring":
        edge = _raw_edge_lines(text, cfg.meta_head_lines, cfg.meta_tail_lines)
    else:
        edge = _head_lines(text, cfg.meta_head_lines) + _tail_lines(text, cfg.meta_tail_lines)
    return bool(edge) and _mentions_meta("\n".join(edge), cfg.meta_words, cfg.meta_match)


def _raw_edge_lines(text: str, head: int, tail: int) -> list[str]:
    """The paper's edge: the first `head` and last `tail` lines of the stripped text, blank lines included
    (so "Title\n\nBody" has "Title" and "" as its first two)."""
    text = text.strip()
    first = text.split("\n", head)[:head] if head else []
    last = text.rsplit("\n", tail)[-tail:] if tail else []
    return first + last


def _mentions_meta(text: str, words: tuple[str, ...], match: str = "word") -> bool:
    if match == "substring":  # the paper: `word in part`, case-sensitive
        return any(w in text for w in words if w)
    # str.find instead of one big regex: the edge lines can be whole paragraphs, and a regex with an
    # alternation tries every position (about 1 ms a response, more than the n-gram scan).
    haystack = text.lower()
    for word in _lowered(words):
        at = haystack.find(word)
        while at >= 0:
            # ASCII words must stand alone ("Revised:" yes, "unrevised" no); CJK has no spaces, so a
            # CJK meta-word matches anywhere.
            if not word.isascii():
                return True
            before, after = haystack[at - 1 : at] if at else "", haystack[at + len(word) : at + len(word) + 1]
            if not _is_ascii_alnum(before) and not _is_ascii_alnum(after):
                return True
            at = haystack.find(word, at + 1)
    return False


@lru_cache(maxsize=32)
def _lowered(words: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(w.lower() for w in words if w)


def _is_ascii_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _head_lines(text: str, k: int) -> list[str]:
    """First k non-empty lines, without splitting the whole (long) text."""
    out: list[str] = []
    pos = 0
    while len(out) < k and pos <= len(text):
        nl = text.find("\n", pos)
        nl = len(text) if nl < 0 else nl
        if not text[pos:nl].isspace() and nl > pos:
            out.append(text[pos:nl])
        pos = nl + 1
    return out


def _tail_lines(text: str, k: int) -> list[str]:
    """Last k non-empty lines, in text order."""
    out: list[str] = []
    end = len(text)
    while len(out) < k and end >= 0:
        nl = text.rfind("\n", 0, end)
        line = text[nl + 1 : end]
        if line and not line.isspace():
            out.append(line)
        end = nl  # -1 when the first line was just read: the loop ends
    return out[::-1]


# ------------------------------------------------------------------------------------------- repair
# Opt-in (`repair: true` on a generating stage): a small model often wraps a good answer in chatter about
# it ("Here is the revised version:" ... "I hope this response helps."). The paper rejects and re-draws such
# samples; `repair` cuts those edge lines off first and lets the filter judge what is left. It never cuts a
# text inside the answer (a loop, a budget cut): what remains ends where the model ended a line of its own.


def trim_meta_edges(text: str, cfg: FilterConfig = EN) -> str:
    """Drop the edge lines the meta-word check would object to, once: of the first `cfg.meta_head_lines`
    non-empty lines, the last one naming a meta-word and every line before it go; of the last
    `cfg.meta_tail_lines`, the first one naming a meta-word and every line after it. One pass only — a text
    whose new edges name meta-words again is left to the filter, so a text about, say, software versions is
    rejected, not eaten line by line. What remains is unchanged (it may be empty)."""
    if not cfg.meta_words:
        return text
    lines = text.strip().split("\n")
    body = [i for i, line in enumerate(lines) if line.strip()]
    head = [i for i in body[: cfg.meta_head_lines] if _mentions_meta(lines[i], cfg.meta_words, cfg.meta_match)]
    tail = [i for i in body[max(0, len(body) - cfg.meta_tail_lines):] if _mentions_meta(lines[i], cfg.meta_words, cfg.meta_match)]
    lo = head[-1] + 1 if head else 0
    hi = tail[0] if tail else len(lines)
    return "\n".join(lines[lo:hi]).strip() if lo < hi else ""


def repair(text: str, cfg: FilterConfig = EN) -> str:
    """`trim_meta_edges`, unless that would drop more than half the words (then the edges were not chatter
    around an answer, and the filter judges the whole)."""
    from selflengthen.writing.text import count_words

    trimmed = trim_meta_edges(text, cfg)
    if not trimmed or count_words(trimmed) < count_words(text) / 2:
        return text
    return trimmed


# --------------------------------------------------------------------------------- repeated n-grams

# Non-ASCII characters for which str.isspace() is true; they become plain spaces before the byte scan.
_UNICODE_SPACES_RE = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
# For the simple path: every whitespace or ASCII control character -> " " (same separators as the bytes).
_SEPARATORS = {c: " " for c in range(33)}
_PAD = b" " * 8  # lets every unit read a full 8-byte window at its start and end

_MASK_LO = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)  # the low k bytes
_MASK_HI = np.array([((1 << 64) - 1) ^ ((1 << (8 * (8 - k))) - 1) for k in range(9)], dtype=np.uint64)
_K1, _K2, _K3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)
_MIX = np.uint64(0xFF51AFD7ED558CCD)
_BASE = 0xD6E8FEB86659FD93  # odd, so it is invertible modulo 2**64
_powers: dict[str, np.ndarray] = {}


def _power_tables(m: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**i and BASE**-i modulo 2**64 for i < m (grown by doubling, shared by all calls)."""
    if _powers.get("up", np.empty(0)).size < m:
        size = max(4096, 1 << (m - 1).bit_length())
        for key, base in (("up", _BASE), ("down", pow(_BASE, -1, 1 << 64))):
            steps = np.full(size, base, dtype=np.uint64)
            steps[0] = 1
            _powers[key] = np.cumprod(steps)  # uint64 products wrap, i.e. are taken modulo 2**64
    return _powers["up"], _powers["down"]


def has_repeated_ngram(text: str, n: int, unit: str = "word") -> bool:
    """True when some n consecutive units occur twice (overlapping occurrences count)."""
    return _has_repeated_ngram_fast(text, n, unit)


def _has_repeated_ngram_fast(text: str, n: int, unit: str = "word", hash_bits: int = 64) -> bool:
    # `hash_bits` < 64 truncates the n-gram hashes: only tests use it, to force many collisions
    # through the exact confirmation below.
    if not text.isascii():
        text = _UNICODE_SPACES_RE.sub(" ", text)
    buf = _PAD + text.encode("utf-8", "surrogatepass") + _PAD
    starts, ends = _unit_bounds(np.frombuffer(buf, dtype=np.uint8), unit)
    m = starts.size
    if m < n:
        return False
    hashes = _ngram_hashes(buf, starts, ends, n)
    if hash_bits < 64:
        hashes &= np.uint64((1 << hash_bits) - 1)
    ordered = np.sort(hashes)
    if not (ordered[1:] == ordered[:-1]).any():
        return False  # the common case: no equal hashes, so certainly no repeat
    return _confirm(buf, starts, ends, n, hashes)


def _unit_bounds(b: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets [start, end) of every unit in the padded buffer `b`."""
    if unit == "word":
        word = b > 32  # bytes <= 32 are whitespace or control characters; UTF-8 multibyte bytes are >= 128
        edges = np.flatnonzero(word[1:] != word[:-1]) + 1
        return edges[0::2], edges[1::2]  # the padding makes edges alternate: start, end, start, ...
    if unit == "zh":
        ascii_ = (b > 32) & (b < 128)
        cont = (b & 0xC0) == 0x80  # UTF-8 continuation byte
        lead = b >= 0xC0
        starts = np.flatnonzero(lead[1:] | (ascii_[1:] & ~ascii_[:-1])) + 1
        # A unit ends before a byte that does not continue it: ASCII run -> non-ASCII byte;
        # multibyte character -> anything but a continuation byte.
        ends = np.flatnonzero((ascii_[:-1] & ~ascii_[1:]) | ((lead[:-1] | cont[:-1]) & ~cont[1:])) + 1
        return starts, ends
    raise ValueError(f"unknown n-gram unit {unit!r}; expected one of {NGRAM_UNITS}")


def _ngram_hashes(buf: bytes, starts: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """64-bit hash of each of the m - n + 1 n-grams; equal n-grams always get equal hashes."""
    # Unit key: its first 8 and last 8 bytes (exact for units up to 16 bytes) and its length, mixed.
    windows = np.ndarray(shape=(len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
    length = ends - starts
    k = np.minimum(length, 8)
    head = windows.take(starts) & _MASK_LO[k]
    tail = windows.take(ends - 8) & _MASK_HI[k]
    key = head * _K1 + tail * _K2 + length.astype(np.uint64) * _K3
    key ^= key >> np.uint64(31)
    key *= _MIX
    key ^= key >> np.uint64(29)
    # Polynomial hash of n consecutive keys from prefix sums: sum_{j<n} key[i+j] * BASE**j.
    m = key.size
    up, down = _power_tables(m + 1)
    prefix = np.zeros(m + 1, dtype=np.uint64)
    np.cumsum(key * up[:m], out=prefix[1:])
    return (prefix[n:] - prefix[:-n]) * down[: m - n + 1]


def _confirm(buf: bytes, starts: np.ndarray, ends: np.ndarray, n: int, hashes: np.ndarray) -> bool:
    """Exact check of the n-grams whose hash is shared: rules out hash collisions."""
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    same = ordered[1:] == ordered[:-1]
    shared = np.zeros(order.size, dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    s, e = starts.tolist(), ends.tolist()
    seen: set[tuple[bytes, ...]] = set()
    for i in np.sort(order[shared]).tolist():
        gram = tuple(buf[s[j] : e[j]] for j in range(i, i + n))
        if gram in seen:
            return True
        seen.add(gram)
    return False


def _units_simple(text: str, unit: str) -> list[str]:
    text = text.translate(_SEPARATORS)
    text = _UNICODE_SPACES_RE.sub(" ", text)
    if unit == "word":
        return text.split()
    if unit == "zh":
        return re.findall(r"[!-\x7f]+|[^\x00-\x7f]", text)
    raise ValueError(f"unknown n-gram unit {unit!r}; expected one of {NGRAM_UNITS}")


def _has_repeated_ngram_simple(text: str, n: int, unit: str = "word") -> bool:
    """Plain reference: a set of n-gram tuples. Same answer as the fast path, several times slower."""
    units = _units_simple(text, unit)
    seen: set[tuple[str, ...]] = set()
    for i in range(len(units) - n + 1):
        gram = tuple(units[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


# ---------------------------------------------------------------------------------------- streaming

_worker_cfg: FilterConfig | None = None


def _init_worker(cfg: FilterConfig) -> None:
    global _worker_cfg
    _worker_cfg = cfg


def _check_chunk(texts: list[str]) -> list[FilterResult]:
    assert _worker_cfg is not None
    return [check(t, _worker_cfg) for t in texts]


def check_many(
    texts: Iterable[str], cfg: FilterConfig = EN, workers: int = 1, chunksize: int = 64
) -> Iterator[FilterResult]:
    """Results for `texts`, in order, streamed.

    With `workers` > 1 the texts are checked in a process pool, `chunksize` texts per task. At most
    2 × workers chunks are in flight, so memory stays flat however many rows stream through
    (`Pool.imap` would read the whole input ahead). Workers are spawned, not forked: callers may hold
    threads (engines, tokenizers) that a fork would copy in a broken state.
    """
    if workers <= 1:
        for text in texts:
            yield check(text, cfg)
        return
    ctx = multiprocessing.get_context("spawn")
    it = iter(texts)
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        pending: deque = deque()
        while True:
            chunk = list(itertools.islice(it, chunksize))
            if chunk:
                pending.append(pool.apply_async(_check_chunk, (chunk,)))
            if pending and (len(pending) >= 2 * workers or not chunk):
                yield from pending.popleft().get()
            elif not chunk:
                return
