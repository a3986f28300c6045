"""writer_sft: AgentWrite's training rows (DESIGN §7) — instruction -> the whole written answer.

The rows have LongWriter-6k's shape and the same chat form as Self-Lengthen's generator rows (the
`generate` prompt around the instruction), so the trained writer is asked the way eval and collect ask it.

Artifacts: `writer.jsonl` (the train stage reads `<this folder>/<role>.jsonl`).
"""

from __future__ import annotations

from pathlib import Path

from selflengthen.stages.common import RoundContext, mean, resumable
from selflengthen.stages.sft_data import generator_row
from selflengthen.stages.write import NAME as WRITTEN
from selflengthen.runfolder.store import atomic_write_jsonl, read_jsonl

NAME = "sft_data"


@resumable(NAME)
def run(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    answers = read_jsonl(ctx.stage_dir(WRITTEN) / "answers.jsonl")
    atomic_write_jsonl(folder / "writer.jsonl", [generator_row(ctx.s.prompts, a) for a in answers])
    return {"rows": len(answers), "mean_words": mean([a["words"] for a in answers])}, ["writer.jsonl"]


def brief(section: dict) -> str:
    return f"{section.get('rows', 0)} writer rows, {section.get('mean_words', 0):.0f} words avg"
