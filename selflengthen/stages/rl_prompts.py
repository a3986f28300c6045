"""rl_prompts: the round's GRPO prompts with their target word ranges (LongWriter-Zero, DESIGN §7).

The pool is the seed instructions plus every instruction self-instructed so far (this round's included);
instructions that the held-out eval uses (`eval.prompt_file`, matched after lower-casing and whitespace
folding, also as the start of an eval prompt) are never trained on. `per_round` of them are drawn (seeded by
the round), and each gets a length constraint phrased in as the collection step does: a target of
`words_min`..`words_max` words (uniform), a random kind and wording (`prompts.length_control`), its range
[lo, hi] from `lwzero_rewards.target_range`. A share `unconstrained` keeps the bare instruction, and its range is
predicted by the base model (`lwzero_rewards.predict_ranges`, cached per prompt in the run folder's
`range_predictions.json`, so later rounds and reruns ask once).

Writes `rl_prompts/<role>.jsonl`: `{"id", "prompt", "lo", "hi", "constraint", "messages"}` (`messages` is the
user turn, so the SFT-shaped fake trainer reads the same rows).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from selflengthen.methods import lwzero_rewards
from selflengthen.support.checks import rule
from selflengthen.engines.base import Request
from selflengthen.stages.common import RoundContext, resumable
from selflengthen.runfolder.store import atomic_write_jsonl, read_jsonl

NAME = "rl_prompts"
RANGE_CACHE = "range_predictions.json"


@dataclass(frozen=True)
class RlPrompts:
    """`rl_prompts:` — which prompts GRPO samples answers for, and their length targets."""

    per_round: int = field(default=64, metadata=rule(ge=0, fix="use 0 for the whole pool, or a count"))
    words_min: int = field(default=500, metadata=rule(ge=1))
    words_max: int = field(default=3000, metadata=rule(ge=1))
    unconstrained: float = field(default=0.0, metadata=rule(ge=0.0, le=1.0))
    predict_max_new_tokens: int = field(default=32, metadata=rule(ge=1))

    def check(self) -> None:
        if self.words_max < self.words_min:
            raise ValueError(f"words_max={self.words_max} < words_min={self.words_min}. Fix: words_min <= words_max")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def held_out(ctx: RoundContext) -> list[str]:
    """The held-out eval prompts, normalised."""
    from selflengthen.evidence.heldout import prompt_path

    path = prompt_path(ctx.s)
    return [_norm(r["prompt"]) for r in read_jsonl(path)] if path.is_file() else []


def pool(ctx: RoundContext) -> list[str]:
    """Seeds + every self-instructed instruction up to this round, de-duplicated, held-out prompts removed."""
    from selflengthen.runfolder import layout
    from selflengthen.stages import self_instruct

    texts = list(ctx.s.seeds)
    for r in range(1, ctx.round_no + 1):
        path = layout.stage_dir(ctx.s.run_dir, r, self_instruct.NAME) / "instructions.jsonl"
        if path.is_file():
            texts += [row["prompt"] for row in read_jsonl(path)]
    evals = held_out(ctx)
    seen, out = set(), []
    for t in texts:
        n = _norm(t)
        if n and n not in seen and not any(e.startswith(n) for e in evals):
            seen.add(n)
            out.append(t)
    return out


@resumable(NAME)
def run(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    cfg = ctx.cfg(NAME)
    role = ctx.method.answer_role
    rng = random.Random(ctx.seed(NAME))
    instructions = pool(ctx)
    pool_size = len(instructions)
    if cfg.per_round:
        instructions = rng.sample(instructions, min(cfg.per_round, len(instructions)))
    l_max = getattr(ctx.train_cfg, "l_max", None)  # GRPO's L_max: a target must end below it
    templates = ctx.s.prompts["length_control"]
    rows, bare = [], []
    for n, text in enumerate(instructions):
        row_id = f"r{ctx.round_no:03d}-p{n:05d}"
        if rng.random() < cfg.unconstrained:
            bare.append((row_id, text))
            continue
        rows.append(lwzero_rewards.constrained_row(row_id, text, rng.randint(cfg.words_min, cfg.words_max), templates, rng))
    rows += _predicted(ctx, cfg, bare)
    too_long = [r for r in rows if l_max is not None and r["hi"] >= l_max]
    rows = [{**r, "messages": [{"role": "user", "content": r["prompt"]}]} for r in rows if r not in too_long]
    rows.sort(key=lambda r: r["id"])
    atomic_write_jsonl(folder / f"{role}.jsonl", rows)
    kinds: dict = {}
    for r in rows:
        kinds[r["constraint"]["type"]] = kinds.get(r["constraint"]["type"], 0) + 1
    summary = {"prompts": len(rows), "pool": pool_size, "kinds": kinds,
               "rejections": {"target_beyond_l_max": len(too_long)} if too_long else {}}
    return summary, [f"{role}.jsonl"]


def _predicted(ctx: RoundContext, cfg: RlPrompts, bare: list[tuple[str, str]]) -> list[dict]:
    """Rows for bare instructions, their ranges predicted by the base model (cached in the run folder)."""
    if not bare:
        return []

    def generate(texts: list[str]) -> list[str]:
        requests = [Request.chat(f"range-{i:05d}", ctx.messages(None, t),
                                 ctx.params(cfg.predict_max_new_tokens, ctx.seed("range", t))) for i, t in enumerate(texts)]
        return ctx.engine.generate(requests)

    fallback = lwzero_rewards.parse_range(f"{cfg.words_min}-{cfg.words_max}")
    ranges = lwzero_rewards.predict_ranges([t for _, t in bare], generate, ctx.s.run_dir / RANGE_CACHE,
                                    predictor=ctx.s.model_path, fallback=fallback)
    return [{"id": i, "prompt": t, "lo": lo, "hi": hi, "constraint": {"type": "predicted", "low": lo, "high": hi}}
            for (i, t), (lo, hi) in zip(bare, ranges)]


def brief(section: dict) -> str:
    return f"{section.get('prompts', 0)} prompts from a pool of {section.get('pool', 0)}"
