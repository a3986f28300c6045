"""sft_data: training rows for both roles from the kept extensions (DESIGN §1.4).

Generator: instruction -> extended response. Extender: the whole-text extension prompt built from the
instruction and the initial response with ~`drop_lines` of its lines randomly dropped (so the extender
learns to add, not only to copy) -> extended response. Rows are chat messages; the last one is the answer.

Artifacts: `generator.jsonl`, `extender.jsonl`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from selflengthen.support.checks import rule
from selflengthen.stages.common import RoundContext, resumable
from selflengthen.stages.extend import NAME as EXTENDED
from selflengthen.runfolder.store import atomic_write_jsonl, read_jsonl

NAME = "sft_data"


@dataclass(frozen=True)
class Sft:
    """`sft:` — how training rows are built."""

    drop_lines: float = field(default=0.2, metadata=rule(ge=0.0, lt=1.0, fix="use the paper's sft.drop_lines=0.2"))


def drop_lines(text: str, share: float, rng: random.Random) -> str:
    """Remove round(share × non-empty lines) randomly chosen non-empty lines, always keeping at least one."""
    lines = text.split("\n")
    full = [i for i, line in enumerate(lines) if line.strip()]
    n_drop = min(round(share * len(full)), len(full) - 1)
    if n_drop <= 0:
        return text
    dropped = set(rng.sample(full, n_drop))
    kept = [line for i, line in enumerate(lines) if i not in dropped]
    out = "\n".join(kept)
    while "\n\n\n" in out:
        out = out.replace("\n\n\n", "\n\n")
    return out.strip()


def _messages(system, user: str, answer: str) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def generator_row(prompts: dict, row: dict) -> dict:
    tpl = prompts["generate"]
    return {"id": row["id"], "messages": _messages(tpl.get("system"), tpl["user"].format(instruction=row["instruction"]),
                                                   row["text"])}


def extender_row(prompts: dict, row: dict, share: float, rng: random.Random) -> dict:
    tpl = prompts["extend"]
    shortened = drop_lines(row["initial"], share, rng)
    user = tpl["stage2"].format(instruction=row["instruction"], text=shortened)
    return {"id": row["id"], "messages": _messages(tpl.get("system"), user, row["text"])}


@resumable(NAME)
def run(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    rows = read_jsonl(ctx.stage_dir(EXTENDED) / "extended.jsonl")
    gen = [generator_row(ctx.s.prompts, r) for r in rows]
    ext = [extender_row(ctx.s.prompts, r, ctx.cfg("sft").drop_lines, random.Random(ctx.seed("drop-lines", r["id"])))
           for r in rows]
    atomic_write_jsonl(folder / "generator.jsonl", gen)
    atomic_write_jsonl(folder / "extender.jsonl", ext)
    return {"rows": len(rows)}, ["generator.jsonl", "extender.jsonl"]


def brief(section: dict) -> str:
    return f"{section.get('rows', 0)} rows per role"
