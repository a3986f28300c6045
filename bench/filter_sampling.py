"""Filter + length-aware sampling over synthetic ~2,000-word responses, against the seed code's way.

The reference is written here the way the seed code does it: a Python loop that builds a tuple per
10-gram into a set and stops at the first repeat; sampling that sorts the lengths and then finds each
item's rank with list.index (O(n^2)). Ours is selflengthen.writing.filters.check_many (vectorised n-gram scan,
optionally a process pool) and selflengthen.writing.sampling.keep_indices (one sort).

Targets: sampling >= 100x faster, filter >= 3x, the two together >= 5x, memory flat in the number of
rows (rows are streamed from a generator; peak RSS is measured in fresh processes at two sizes).

    python bench/filter_sampling.py                 # 100,000 rows, 2 workers (a few minutes)
    python bench/filter_sampling.py --n 2000        # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from selflengthen.writing.filters import EN, check_many  # noqa: E402
from selflengthen.writing.sampling import keep_indices  # noqa: E402

A, P = 2.0, 3.0  # paper's length-aware sampling parameters

# ------------------------------------------------------------------------------ synthetic responses


class Corpus:
    """A seeded stream of ~2,000-word responses cut from one long Zipf-distributed word sequence.

    Each row is a window of the corpus (so rows are distinct and cheap to make); 10% get a planted
    repeated 10-gram, 8% end without terminal punctuation, 2% start with a meta-word line.
    """

    def __init__(self, seed: int = 0, vocab_size: int = 4000, corpus_words: int = 400_000):
        rng = random.Random(seed)
        letters = "abcdefghijklmnopqrstuvwxyz"
        vocab = list({"".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(vocab_size)})
        rng.shuffle(vocab)
        weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
        words = rng.choices(vocab, weights=weights, k=corpus_words)
        parts, offsets, pos = [], array("q"), 0
        for i, w in enumerate(words):
            sep = "\n\n" if i % 97 == 96 else (". " if i % 13 == 12 else " ")
            offsets.append(pos)
            parts.append(w + sep)
            pos += len(w) + len(sep)
        offsets.append(pos)
        self.text = "".join(parts)
        self.offsets = offsets
        self.seed = seed

    def rows(self, n: int) -> Iterator[str]:
        rng = random.Random(self.seed + 1)
        off, text, total = self.offsets, self.text, len(self.offsets) - 1
        for _ in range(n):
            length = rng.randint(1800, 2200)
            start = rng.randrange(total - length)
            row = text[off[start] : off[start + length]].rstrip()
            kind = rng.random()
            if kind < 0.10:  # plant a repeat of a 10-gram from earlier in the row
                src = start + rng.randrange(0, length // 2)
                at = src + 10 + rng.randrange(0, length // 2 - 10)
                gram = text[off[src] : off[src + 10]]
                row = text[off[start] : off[at]] + gram + text[off[at] : off[start + length]].rstrip()
            if kind > 0.92:
                row = row.rstrip(".") + ","
            else:
                row = row.rstrip(".") + "."
            if 0.10 <= kind < 0.12:
                row = "Revised version:\n" + row
            yield row


# ----------------------------------------------------------------------------------- the reference

REF_TERMINAL = set(EN.terminal)
REF_META = EN.meta_words


def ref_check(response: str) -> tuple[bool, str]:
    """The seed code's filter: rstrip, ending, meta-words in split lines, a tuple per 10-gram."""
    response = response.rstrip()
    if not response:
        return False, "empty"
    if response[-1] not in REF_TERMINAL:
        return False, "no_terminal_punctuation"
    part = response.split("\n")
    part = "\n".join(part[:2] + part[-3:]).lower()
    for word in REF_META:
        if word in part:
            return False, "meta_word"
    words = response.split()
    seen = set()
    for i in range(len(words) - 10 + 1):
        gram = tuple(words[i : i + 10])
        if gram in seen:
            return False, "repeated_10gram"
        seen.add(gram)
    return True, ""


def ref_keep(lengths: list[int], a: float, p: float, rng: random.Random) -> list[int]:
    """The seed code's sampling: rank of each item found with list.index on the sorted lengths."""
    ordered = sorted(lengths)
    n = len(lengths)
    kept = []
    for i, length in enumerate(lengths):
        rank = 1 - ordered.index(length) / n
        if rng.random() > a * rank**p:
            kept.append(i)
    return kept


# --------------------------------------------------------------------------------------- measuring


def peak_rss_mib() -> tuple[float, float]:
    """Peak RSS of this process and of its largest finished child (worker), in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, kids


def measured(rows: Iterator[str], lengths: array) -> Iterator[str]:
    """Pass rows through, noting each length (sampling needs them: 8 bytes a row)."""
    for text in rows:
        lengths.append(len(text))
        yield text


def ours(corpus: Corpus, n: int, workers: int) -> tuple[float, float, list[bool], list[int]]:
    lengths = array("q")
    verdicts = []
    t0 = time.perf_counter()
    for result in check_many(measured(corpus.rows(n), lengths), EN, workers=workers):
        verdicts.append(result.ok)
    t_filter = time.perf_counter() - t0
    t0 = time.perf_counter()
    kept = keep_indices(lengths, A, P, random.Random(0))
    t_sample = time.perf_counter() - t0
    return t_filter, t_sample, verdicts, kept


def rss_probe(n: int, workers: int) -> None:
    corpus = Corpus()
    lengths = array("q")
    ok = 0
    for result in check_many(measured(corpus.rows(n), lengths), EN, workers=workers):
        ok += result.ok
    kept = keep_indices(lengths, A, P, random.Random(0))
    own, kids = peak_rss_mib()
    print(json.dumps({"n": n, "ok": ok, "kept": len(kept), "rss_main_mib": own, "rss_worker_mib": kids}))


def run_probe(n: int, workers: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-probe", str(n), "--workers", str(workers)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPU ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}, "
            f"numpy {np.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="rows to stream")
    ap.add_argument("--workers", type=int, default=2, help="filter processes for ours (reference: 1)")
    ap.add_argument("--ref-sampling-n", type=int, default=20_000,
                    help="time the O(n^2) reference sampling on this many rows and extrapolate to --n")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS probes")
    ap.add_argument("--rss-probe", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_probe:
        rss_probe(args.rss_probe, args.workers)
        return

    n = args.n
    print(f"machine: {machine()}")
    print(f"rows: {n} synthetic responses, workers (ours): {args.workers}")
    corpus = Corpus()
    sample = min(n, 2000)
    words = sum(len(t.split()) for t in corpus.rows(sample)) / sample
    t0 = time.perf_counter()
    for _ in corpus.rows(sample):
        pass
    t_gen = (time.perf_counter() - t0) * n / sample
    print(f"mean words/row: {words:.0f}; making the rows alone: {t_gen:.2f} s (included on both sides below)")

    # Filter: the reference streams rows through the seed-style check, one process.
    t0 = time.perf_counter()
    ref_verdicts, ref_lengths = [], []
    for text in corpus.rows(n):
        ref_lengths.append(len(text))
        ref_verdicts.append(ref_check(text)[0])
    t_ref_filter = time.perf_counter() - t0

    t_filter, t_sample, verdicts, kept = ours(corpus, n, args.workers)
    agree = sum(a == b for a, b in zip(verdicts, ref_verdicts))
    print(f"filter decisions agree with the reference: {agree}/{n}; passed: {sum(verdicts)}")

    # Sampling: the reference is O(n^2); above --ref-sampling-n it is timed on a prefix and scaled by n^2.
    m = min(n, args.ref_sampling_n)
    t0 = time.perf_counter()
    ref_keep(ref_lengths[:m], A, P, random.Random(0))
    t_ref_sample = (time.perf_counter() - t0) * (n / m) ** 2
    note = "" if m == n else f" (timed on {m} rows, scaled by (n/{m})^2)"
    print(f"sampling kept {len(kept)}/{n}{note}")

    rows = [
        ("filter", t_ref_filter, t_filter, 3),
        ("sampling", t_ref_sample, t_sample, 100),
        ("filter + sampling", t_ref_filter + t_ref_sample, t_filter + t_sample, 5),
    ]
    print()
    print(f"| {'stage':<18} | {'reference s':>11} | {'ours s':>8} | {'ratio':>8} | {'target':>6} | met? |")
    print(f"|{'-' * 20}|{'-' * 13}|{'-' * 10}|{'-' * 10}|{'-' * 8}|------|")
    for stage, ref, our, target in rows:
        ratio = ref / our
        print(f"| {stage:<18} | {ref:>11.2f} | {our:>8.3f} | {ratio:>7.1f}x | {target:>5}x | "
              f"{'yes' if ratio >= target else 'NO':<4} |")

    if not args.no_rss:
        small = max(n // 10, 1)
        print()
        # Only the main process is shown: on Linux a spawned worker inherits its parent's ru_maxrss
        # across fork+exec, so RUSAGE_CHILDREN cannot tell the workers apart. A worker holds one chunk.
        print("peak RSS of our path, main process (a fresh process per size):")
        for size in (small, n):
            probe = run_probe(size, args.workers)
            print(f"  n = {size:>7}: {probe['rss_main_mib']:6.1f} MiB")


if __name__ == "__main__":
    main()
