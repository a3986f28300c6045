"""LongWriter-Zero's rewards (DESIGN §7): targets, length, format, repetition, quality, and how they combine.

Owns the reward arithmetic and nothing else; the GRPO trainer (`training/grpo_lora.py`) wires these
functions into TRL. Everything except `QualityModel` is a pure function of its arguments (no torch).

- **Target range** [lo, hi] per prompt, in words: from an explicit length constraint (`target_range`:
  ±10% around "about N", a range as given, the constraint's band for more/less than), else predicted by
  a model (`predict_ranges`, the model call injected, answers cached per prompt in a JSON file) and parsed
  with the paper's rules (`parse_range`: multiples of 100, at most 3,000 wide).
- **Length**: 1 inside [lo, hi], len/lo below, (L_max − len)/(L_max − hi) above, 0 at and after L_max.
  The length counted is the answer's *distinct* content: a paragraph that nearly repeats an earlier one
  adds no words, so padding to the target buys no length reward (the paper's main reward hack).
- **Format**: with thinking on, exactly one `<think>…</think>` followed by exactly one
  `<answer>…</answer>`; `answer_text` is the part whose length counts.
- **Repetition**: 1 minus the larger of two shares — words in near-duplicate paragraphs (word-shingle
  Jaccard against every earlier paragraph) and repeated n-grams (the quality filter's n-gram unit and n).
- **Quality**: any sequence-classification reward model by path (`QualityModel`, loaded lazily), or none.
- **Combine**: TRL's own, not here: `training/grpo_lora.py` sets `multi_objective_aggregation=
  "normalize_then_sum"` (each reward normalised within its group, the weighted sum over the batch).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from selflengthen.writing.filters import EN, FilterConfig, _units_simple, has_repeated_ngram
from selflengthen.writing.length_control import Constraint, make_constraint, phrase
from selflengthen.writing.text import count_words, split_paragraphs

MAX_WIDTH = 3000  # paper: a target range is at most 3,000 words wide
STEP = 100  # paper: predicted ranges are multiples of 100 words
ABOUT_SPREAD = 0.1  # paper: "about N" -> N ± 10%


# --- target ranges ----------------------------------------------------------------------------------

def target_range(c: Constraint, max_width: int = MAX_WIDTH) -> tuple[int, int]:
    """[lo, hi] in words for an explicit constraint.

    about N -> [0.9 N, 1.1 N] (rounded); range a–b -> [a, b]; more than N -> [N, 1.5 N]; less than N ->
    [N/2, N] (the band the eval scores, `Constraint.band`). A derived edge is moved so the range is at most
    `max_width` wide; a range the user wrote is kept as written. Explicit numbers are not rounded to 100s:
    "about 80 words" must not become 0–100."""
    if c.kind == "about":
        return round(c.target * (1 - ABOUT_SPREAD)), round(c.target * (1 + ABOUT_SPREAD))
    if c.kind == "range":
        return c.low, c.high
    lo, hi = (round(x) for x in c.band())
    if hi - lo > max_width:
        lo, hi = (lo, lo + max_width) if c.kind == "above" else (hi - max_width, hi)
    return lo, hi


_RANGE_RE = re.compile(r"(\d[\d,]*)\s*(?:-|–|—|~|to|and)\s*(\d[\d,]*)", re.IGNORECASE)
_ONE_NUMBER_RE = re.compile(r"(\d[\d,]*)")


def parse_range(text: str, step: int = STEP, max_width: int = MAX_WIDTH) -> Optional[tuple[int, int]]:
    """A predicted word range from a model's answer, snapped to the paper's rules; None if unreadable.

    Reads the last "A-B" / "A to B" / "[A, B]" (or a JSON {"lo": A, "hi": B}); a lone number N reads as
    "about N" (±10%). lo is floored and hi ceiled to multiples of `step`, the range is at least one step
    wide, and a range wider than `max_width` is shrunk to `max_width` around its middle."""
    pair = _json_pair(text)
    if pair is None:
        cleaned = re.sub(r"\[\s*(\d[\d,]*)\s*,\s*(\d[\d,]*)\s*\]", r"\1-\2", text)
        matches = _RANGE_RE.findall(cleaned)
        if matches:
            pair = tuple(int(x.replace(",", "")) for x in matches[-1])
        else:
            numbers = _ONE_NUMBER_RE.findall(text)
            if not numbers:
                return None
            n = int(numbers[-1].replace(",", ""))
            pair = (n * (1 - ABOUT_SPREAD), n * (1 + ABOUT_SPREAD))
    lo, hi = sorted(float(x) for x in pair)
    if hi <= 0:
        return None
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    if hi <= lo:
        hi = lo + step
    if hi - lo > max_width:
        mid = (lo + hi) / 2
        lo = max(0, math.floor((mid - max_width / 2) / step) * step)
        hi = lo + max_width
    return int(lo), int(hi)


def _json_pair(text: str) -> Optional[tuple[float, float]]:
    m = re.search(r"\{[^{}]*\}", text)
    if not m:
        return None
    try:
        obj = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    for a, b in (("lo", "hi"), ("low", "high"), ("min", "max")):
        if isinstance(obj.get(a), (int, float)) and isinstance(obj.get(b), (int, float)):
            return float(obj[a]), float(obj[b])
    return None


PREDICT_PROMPT = (
    "How many words should a good answer to the following request have? Reply with a word range only, "
    "as LOW-HIGH, both multiples of 100 and at most 3000 apart. If the request names a length, stay within "
    "10% of it.\n\nRequest:\n{prompt}"
)


def predict_ranges(prompts: Sequence[str], generate: Callable[[list[str]], list[str]], cache_path: Path,
                   predictor: str = "", template: str = PREDICT_PROMPT,
                   fallback: Optional[tuple[int, int]] = None) -> list[Optional[tuple[int, int]]]:
    """A predicted [lo, hi] per prompt that names no length: asks `generate` (a batched model call, e.g. an
    engine wrapped in a lambda) for the prompts not yet in the cache, parses with `parse_range`, and saves
    the cache (a JSON file in the run folder, written atomically) before returning. `predictor` names the
    model: a different predictor does not reuse another's answers. Unreadable answers give `fallback`
    (and are not cached, so a rerun asks again)."""
    from selflengthen.runfolder.store import atomic_write_json, read_json

    cache_path = Path(cache_path)
    cache: dict = read_json(cache_path) if cache_path.exists() else {}
    keys = [_cache_key(predictor, template, p) for p in prompts]
    missing = sorted({k: p for k, p in zip(keys, prompts) if k not in cache}.items())
    if missing:
        answers = generate([template.format(prompt=p) for _, p in missing])
        for (key, _), answer in zip(missing, answers):
            parsed = parse_range(answer)
            if parsed is not None:
                cache[key] = list(parsed)
        atomic_write_json(cache_path, cache)
    return [tuple(cache[k]) if k in cache else fallback for k in keys]


def _cache_key(predictor: str, template: str, prompt: str) -> str:
    return hashlib.sha256("\0".join((predictor, template, prompt)).encode("utf-8")).hexdigest()[:24]


def constrained_row(row_id: str, instruction: str, words: int, templates: Mapping,
                    rng: random.Random) -> dict:
    """A GRPO prompt row: `instruction` with a length constraint phrased into it as the collection step does
    (a constraint of a random kind that `words` words would meet, in a random wording), and its [lo, hi]."""
    c = make_constraint(words, rng)
    lo, hi = target_range(c)
    return {"id": row_id, "prompt": phrase(instruction, c, templates, rng), "lo": lo, "hi": hi,
            "constraint": c.to_dict()}


def eval_row(row_id: str, row: Mapping) -> dict:
    """A held-out eval prompt (`{"prompt", "type", "target" | "low", "high"}`) as a GRPO prompt row."""
    c = Constraint.from_dict(row)
    lo, hi = target_range(c)
    return {"id": row_id, "prompt": row["prompt"], "lo": lo, "hi": hi, "constraint": c.to_dict()}


# --- length -----------------------------------------------------------------------------------------

def length_reward(words: float, lo: float, hi: float, l_max: float) -> float:
    """1 in [lo, hi]; words/lo below lo; (l_max − words)/(l_max − hi) above hi; 0 at and after l_max."""
    if not 0 <= lo <= hi < l_max:
        raise ValueError(f"need 0 <= lo <= hi < l_max, got lo={lo}, hi={hi}, l_max={l_max}")
    if words >= l_max:
        return 0.0
    if words < lo:
        return words / lo
    if words <= hi:
        return 1.0
    return (l_max - words) / (l_max - hi)


# --- format -----------------------------------------------------------------------------------------

_THINK_ANSWER_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_ok(completion: str, think: bool) -> bool:
    """think=True: exactly one `<think>…</think>` then exactly one `<answer>…</answer>` and nothing else
    around them. think=False: no such tags at all (a stray tag is a malformed answer)."""
    if not think:
        return not any(tag in completion for tag in _TAGS)
    if any(completion.count(tag) != 1 for tag in _TAGS):
        return False
    m = _THINK_ANSWER_RE.fullmatch(completion)
    return bool(m and m.group(2).strip())


def format_reward(completion: str, think: bool) -> float:
    """1 when `format_ok`, else 0. With think=False it is 1 for every answer without a stray tag: constant
    within a group, so after the group z-score it adds nothing (selflengthen/conf/train/grpo.yaml says why think is off)."""
    return 1.0 if format_ok(completion, think) else 0.0


def answer_text(completion: str, think: bool) -> str:
    """The part of a completion whose length counts: the whole text without thinking; with thinking the
    inside of `<answer>…</answer>` when the format is right, else "" (a malformed answer earns no length)."""
    if not think:
        return completion.strip()
    if not format_ok(completion, think):
        return ""
    return _THINK_ANSWER_RE.fullmatch(completion).group(2).strip()


# --- repetition -------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[^\W_]+")


def _shingles(paragraph: str, k: int) -> frozenset:
    """Word k-shingles of a paragraph, lower-cased and without punctuation; a paragraph shorter than k
    words is one shingle (its word tuple), so two equal short lines still match."""
    words = _WORD_RE.findall(paragraph.lower())
    if len(words) < k:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i:i + k]) for i in range(len(words) - k + 1))


def duplicate_paragraphs(text: str, threshold: float = 0.5, k: int = 3) -> list[bool]:
    """Per paragraph (`text.split_paragraphs`): True when its shingle Jaccard similarity with some earlier
    paragraph is >= `threshold`. O(p²) set comparisons; p is in the tens for a long answer."""
    paragraphs, _ = split_paragraphs(text)
    seen: list[frozenset] = []
    flags = []
    for p in paragraphs:
        s = _shingles(p, k)
        flags.append(bool(s) and any(len(s & t) >= threshold * len(s | t) for t in seen if t))
        seen.append(s)
    return flags


def distinct_words(text: str, threshold: float = 0.5, k: int = 3) -> int:
    """Words in `text` not counting paragraphs that nearly repeat an earlier one."""
    paragraphs, _ = split_paragraphs(text)
    flags = duplicate_paragraphs(text, threshold, k)
    return sum(count_words(p) for p, dup in zip(paragraphs, flags) if not dup)


def duplicate_share(text: str, threshold: float = 0.5, k: int = 3) -> float:
    """Share of the words of `text` that sit in near-duplicate paragraphs (0 for an empty text)."""
    total = count_words(text)
    return 0.0 if total == 0 else 1 - distinct_words(text, threshold, k) / total


def repeated_ngram_share(text: str, cfg: FilterConfig = EN) -> float:
    """Share of n-gram positions whose n-gram already occurred earlier (the quality filter's unit and n).
    The filter's fast check answers "none" for most texts; only then is the share counted in Python."""
    if not has_repeated_ngram(text, cfg.ngram, cfg.ngram_unit):
        return 0.0
    units = _units_simple(text, cfg.ngram_unit)
    total = len(units) - cfg.ngram + 1
    seen: set = set()
    repeats = 0
    for i in range(total):
        gram = tuple(units[i:i + cfg.ngram])
        repeats += gram in seen
        seen.add(gram)
    return repeats / total


def repetition_reward(text: str, cfg: FilterConfig = EN, threshold: float = 0.5, k: int = 3) -> float:
    """1 − max(near-duplicate paragraph share, repeated n-gram share), in [0, 1]: 1 for a text that never
    repeats itself, 0 for one made only of copies."""
    return 1.0 - max(duplicate_share(text, threshold, k), repeated_ngram_share(text, cfg))


# --- quality ----------------------------------------------------------------------------------------

class QualityModel:
    """A sequence-classification reward model by path (a Bradley-Terry RM in the paper): score = the first
    logit for (prompt, answer), rendered with the model's chat template when it has one.

    Lifecycle `load()` / `score()` / `close()`; torch and transformers are imported in `load()`, which
    `score()` calls on first use."""

    def __init__(self, path: str, max_length: int = 4096, batch_size: int = 4, device: Optional[str] = None):
        self.path, self.max_length, self.batch_size, self.device = path, max_length, batch_size, device
        self._model = self._tokenizer = None

    def load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = AutoModelForSequenceClassification.from_pretrained(self.path).to(device).eval()
        if self._model.config.pad_token_id is None:
            self._model.config.pad_token_id = self._tokenizer.pad_token_id

    def _render(self, prompt: str, answer: str) -> str:
        if getattr(self._tokenizer, "chat_template", None):
            return self._tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False)
        return f"{prompt}\n\n{answer}"

    def score(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        import torch

        self.load()
        out: list[float] = []
        texts = [self._render(p, a) for p, a in zip(prompts, answers)]
        for i in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                    truncation=True, max_length=self.max_length, add_special_tokens=False)
            batch = {k: v.to(self._model.device) for k, v in batch.items()}
            with torch.inference_mode():
                out.extend(self._model(**batch).logits[:, 0].float().tolist())
        return out

    def close(self) -> None:
        self._model = self._tokenizer = None
