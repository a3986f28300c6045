"""What every stage of a round shares: its context (folder, seeds, settings, engine, trainer), the decoding
settings, the wave loop with re-draws, and the resumable wrapper."""

from __future__ import annotations

import functools
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from selflengthen import layout
from selflengthen.config import rule
from selflengthen.engines.base import Request, SamplingParams
from selflengthen.store import ItemLog, iter_chunks, mark_done, stage_done

if TYPE_CHECKING:  # pragma: no cover
    from selflengthen.methods.base import Method
    from selflengthen.settings import Settings


@dataclass(frozen=True)
class Decoding:
    """`decoding:` — sampling for every generation (paper values); temperature 0 = greedy."""

    temperature: float = field(default=0.7, metadata=rule(ge=0.0, fix="use 0 for greedy, 0.7 as in the paper"))
    top_p: float = field(default=0.8, metadata=rule(gt=0.0, le=1.0, fix="use 0.8 as in the paper"))
    top_k: int = field(default=20, metadata=rule(ge=0, fix="use 20 as in the paper (0 = no top-k cut)"))
    repetition_penalty: float = field(default=1.1, metadata=rule(gt=0.0, fix="use 1.1 as in the paper (1.0 = off)"))


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts: the same run, round, item and attempt give the same draw."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


@dataclass
class RoundContext:
    """What a stage may use: the settings, the round, the engine and the trainer. Stages hand data to each
    other through files in `stage_dir(name)` only."""

    s: "Settings"
    round_no: int
    engine: Any  # an Engine, loaded lazily on first use (engine_session.LazyEngine)
    adapters: dict  # adapter name -> folder used for generation in this round (None = base)
    method: Optional["Method"] = None
    trainer: Optional[Callable] = None
    train_cfg: Any = None
    model_path: Optional[Callable[[], str]] = None
    folder: Optional[Path] = None  # default: the round's folder; the final stages use final/
    adapters_out: dict = field(default_factory=dict)  # set by the train stage

    def __post_init__(self) -> None:
        if not self.adapters_out:
            self.adapters_out = dict(self.adapters)

    @property
    def round_dir(self) -> Path:
        return self.folder or layout.round_dir(self.s.run_dir, self.round_no)

    def stage_dir(self, name: str) -> Path:
        return self.round_dir / name

    def cfg(self, key: str) -> Any:
        """The typed config section `key` (e.g. "extend"), parsed and checked at start-up."""
        return self.s.section(key)

    def seed(self, *parts: object) -> int:
        return derive_seed(self.s.seed, self.round_no, *parts)

    def params(self, max_new_tokens: int, seed: int, stop: Sequence[str] = ()) -> SamplingParams:
        d = self.s.decoding
        return SamplingParams(temperature=d.temperature, top_p=d.top_p, top_k=d.top_k,
                              repetition_penalty=d.repetition_penalty, max_new_tokens=max_new_tokens,
                              stop=tuple(stop), seed=seed)

    def messages(self, system: Optional[str], user: str) -> list[tuple[str, str]]:
        return ([("system", system)] if system else []) + [("user", user)]


def attempt_waves(log: ItemLog, items: dict[str, dict], make_request: Callable[[str, dict, int], Request],
                  judge: Callable[[dict, str], tuple[bool, str]], max_attempts: int, engine, chunk: int,
                  advance: Callable[[int], None],
                  prepare: Callable[[str], str] = str.strip) -> dict[str, Optional[dict]]:
    """Generate each item until a sample passes `judge` or `max_attempts` is reached.

    Each wave sends every pending item together (in durable chunks of `chunk` requests); items that fail go
    to the next wave. `prepare` cleans a generation before it is judged and saved. Records `{id: "<item>#<attempt>", item, attempt, text, ok, reason}` are appended to the
    log after each chunk, so a restart resumes where it stopped. Returns item -> its passing record or None.
    """
    def state() -> tuple[dict, dict]:
        tries: Counter = Counter()
        passed: dict[str, dict] = {}
        for r in log.records:
            tries[r["item"]] += 1
            if r["ok"] and r["item"] not in passed:
                passed[r["item"]] = r
        return tries, passed

    while True:
        tries, passed = state()
        pending = [i for i in items if i not in passed and tries[i] < max_attempts]
        if not pending:
            break
        for part in iter_chunks(pending, chunk):
            requests = [make_request(i, items[i], tries[i]) for i in part]
            texts = engine.generate(requests)
            records = []
            for i, text in zip(part, map(prepare, texts)):
                ok, reason = judge(items[i], text)
                records.append({"id": f"{i}#{tries[i]}", "item": i, "attempt": tries[i], "text": text,
                                "ok": ok, "reason": reason})
                if ok or tries[i] + 1 >= max_attempts:
                    advance(1)  # the item is settled: passed, or out of attempts
            log.append(records)
    _, passed = state()
    return {i: passed.get(i) for i in items}


def rejection_counts(log: ItemLog) -> dict[str, int]:
    return dict(Counter(r["reason"] for r in log.records if not r["ok"]))


def mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def resumable(name: str):
    """Wrap a stage body `body(ctx, folder, *args) -> (summary, artifact names)` with what every stage does:
    return the recorded summary if the stage already finished (and its artifacts still match), else run
    the body, time it, and write `done.json` last."""
    def wrap(body: Callable[..., tuple[dict, list[str]]]):
        @functools.wraps(body)
        def run(ctx: RoundContext, *args) -> dict:
            folder = ctx.stage_dir(name)
            done = stage_done(folder)
            if done:
                return done["summary"]
            start = time.time()
            summary, files = body(ctx, folder, *args)
            summary["seconds"] = time.time() - start
            mark_done(folder, files, summary=summary)
            return summary
        return run
    return wrap


def preparer(trim: bool) -> Callable[[str], str]:
    """How a generation is cleaned before the filter sees it: stripped, and optionally cut back to its last
    complete sentence when the token budget ended it mid-sentence (see filters.trim_to_sentence)."""
    from selflengthen.filters import trim_to_sentence

    return trim_to_sentence if trim else str.strip
