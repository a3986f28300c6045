"""rl: the optional GRPO stage after a method's rounds — LongWriter-Zero on top of Self-Lengthen (DESIGN §7).

One switch, `rl.enabled`. After the last round, in the run's `final/` folder:

  rl_prompts  the prompts with length targets (stages/rl_prompts.py, its `rl_prompts:` section), drawn from the
              seeds and every round's self-instructed instructions, held-out eval prompts removed;
  rl          GRPO (training/grpo_lora.py) of the answering role, starting from its last adapter (the last
              round's generator), with the GRPO settings of `rl.grpo` over train/grpo.yaml's defaults;
              writes `final/rl/<role>/adapter`, which the eval and collect then use as the role's adapter.

A disabled stage returns `{"skipped": "rl.enabled=false"}` and writes nothing. The run's own `train:` stays
the SFT of the rounds; this stage has its own trainer settings, checked at start-up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from selflengthen.runfolder import layout
from selflengthen.support import tracking
from selflengthen.support import ui
from selflengthen.stages import rl_prompts
from selflengthen.stages.common import RoundContext
from selflengthen.runfolder.store import mark_done, read_jsonl, reset_dir, stage_done

log = logging.getLogger(__name__)

NAME = "rl"


@dataclass(frozen=True)
class Rl:
    """`rl:` — GRPO after the rounds, from the last adapter of the answering role."""

    enabled: bool = False
    grpo: dict = field(default_factory=dict)  # GrpoConfig keys (train/grpo.yaml) that differ from its defaults

    def check(self) -> None:
        self.grpo_config()  # a bad GRPO key or value stops the run at start-up, not after the rounds

    def grpo_config(self):
        from selflengthen.training.grpo_lora import GrpoConfig

        return GrpoConfig.from_dict(self.grpo, "rl.grpo")


def _grpo_ctx(ctx: RoundContext) -> RoundContext:
    """The context with GRPO as its trainer (rl_prompts reads the trainer's L_max from it)."""
    from selflengthen.training.grpo_lora import train_grpo

    ctx.trainer, ctx.train_cfg = train_grpo, ctx.cfg(NAME).grpo_config()
    return ctx


def run_prompts(ctx: RoundContext) -> dict:
    if not ctx.cfg(NAME).enabled:
        return {"skipped": "rl.enabled=false"}
    return rl_prompts.run(_grpo_ctx(ctx))


def run_train(ctx: RoundContext) -> dict:
    """GRPO of the answering role; skips when done; a crash resumes from the trainer's checkpoints."""
    if not ctx.cfg(NAME).enabled:
        return {"skipped": "rl.enabled=false"}
    ctx = _grpo_ctx(ctx)
    role = ctx.method.answer_role
    folder = ctx.stage_dir(NAME) / role
    done = stage_done(folder)
    if done:
        ctx.adapters_out[role] = layout.absolute(ctx.s.run_dir, done["summary"]["adapter"])
        return {role: done["summary"]}
    start = time.time()
    rows = read_jsonl(ctx.stage_dir(rl_prompts.NAME) / f"{role}.jsonl")
    previous = ctx.adapters.get(role)
    ctx.engine.release()  # the accelerator's memory goes to training
    metrics = _metrics(folder) if (folder / "metrics.json").exists() and \
        (folder / "adapter" / "adapter_config.json").exists() else None  # trained, cut off before done.json
    if metrics is None:
        if (folder / "adapter").exists():
            reset_dir(folder / "adapter")
        ui.console.print(f"final · GRPO of the {role} on {len(rows)} prompts (from {previous or 'the base model'})")
        with ui.progress(f"final · rl {role}", 1) as bar, tracking.training("final_rl", role):
            metrics = ctx.trainer(ctx.model_path(), rows, folder, previous, ctx.train_cfg, progress=bar.set)
    summary = {**metrics, "adapter": layout.relative(ctx.s.run_dir, str(folder / "adapter")),
               "from": layout.relative(ctx.s.run_dir, previous), "rows": len(rows), "seconds": time.time() - start}
    files = sorted(str(p.relative_to(folder)) for p in (folder / "adapter").rglob("*") if p.is_file())
    mark_done(folder, files, summary=summary)
    ctx.adapters_out[role] = str(folder / "adapter")
    return {role: summary}


def _metrics(folder: Path) -> dict | None:
    """The finished training's metrics.json, or None when it is damaged (reported: the training is redone)."""
    from selflengthen.runfolder.records import Metrics
    from selflengthen.runfolder.store import CorruptArtifact, read_record

    try:
        return read_record(folder / "metrics.json", Metrics)
    except CorruptArtifact as exc:
        log.warning("%s: training it again", exc)
        return None


def brief_prompts(section: dict) -> str:
    return section.get("skipped") or rl_prompts.brief(section)


def brief(section: dict) -> str:
    if section.get("skipped"):
        return section["skipped"]
    parts = []
    for role, t in section.items():
        if isinstance(t, dict):
            reward = t.get("last_step", {}).get("rewards/length/mean")
            parts.append(f"{role} {t.get('steps', 0)} GRPO steps" +
                         (f", length reward {reward:.2f}" if isinstance(reward, (int, float)) else ""))
    return ", ".join(parts)


def stages():
    """The RL stages, for a method's `final_stages` (after the rounds; each a no-op unless rl.enabled)."""
    from selflengthen.methods.base import Stage

    return (Stage(rl_prompts.NAME, run_prompts, brief_prompts,
                  config=((NAME, Rl), (rl_prompts.NAME, rl_prompts.RlPrompts))),
            Stage(NAME, run_train, brief))
