"""train: LoRA fine-tuning of every role of the method for the round (DESIGN §1.5).

`train_stage(source)` makes the stage: each role trains on `<source>/<role>.jsonl` with the run's trainer
(training/), continues from the adapter it generated with in this round (round 1: the base model) and
writes `train/<role>/adapter`; the next round generates with these. A role with no training rows
(nothing survived the filters) keeps its previous adapter and says so in the summary. Adapter paths are
recorded relative to the run folder, so a moved or copied run keeps using its own adapters.

A role in `ctx.defer` (the last round's roles that nothing after the rounds uses: run.defer_unused) is not
trained: its record says `deferred` and its adapter is None until recipe.complete_deferred trains it — from
the same rows and the same parent adapter, so the adapter is the one it would have been — when a larger
`iterations=` needs it. A deferred record is not "done" for a context that does not defer the role.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from selflengthen.runfolder import layout
from selflengthen.support import tracking
from selflengthen.support import ui
from selflengthen.methods.base import Stage
from selflengthen.stages.common import RoundContext
from selflengthen.runfolder.store import mark_done, read_json, read_jsonl, reset_dir, stage_done
from selflengthen.training import TRUNCATED_ROW, fitting_rows
from selflengthen.training.save import adapter_digest, recover_adapter

NAME = "train"
log = logging.getLogger(__name__)


def adapter_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in (folder / "adapter").rglob("*") if p.is_file())


def free_memory() -> None:
    """Return what the engine and the last trainer held before the next model loads. A Trainer sits in
    reference cycles, so without a collection one role's model is still resident while the next trains
    (measured: peak 3.43 GiB instead of 3.03 for two embedded-model roles); glibc keeps freed heap unless
    trimmed."""
    import ctypes
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def train_stage(source: str, roles: tuple[str, ...] | None = None) -> Stage:
    """The train stage of a method whose training rows are `<source>/<role>.jsonl` (every role of the method,
    or just `roles`)."""
    return Stage(NAME, lambda ctx: run(ctx, source, roles), brief=brief)


def brief(section: dict) -> str:
    parts = []
    for role, t in section.items():
        if isinstance(t, dict):
            parts.append(f"{role} " + ("deferred" if t.get("deferred") else "skipped" if t.get("loss") is None
                                       else f"loss {t['loss']:.3f}"))
    return ", ".join(parts)


def deferred_roles(section: dict) -> list[str]:
    """The roles a train stage's summary section left for later."""
    return [role for role, t in (section or {}).items() if isinstance(t, dict) and t.get("deferred")]


def run(ctx: RoundContext, source: str, roles: tuple[str, ...] | None = None) -> dict:
    """Returns {role: {"loss", "adapter", "seconds", ...}}; skips roles already trained. Sets
    `ctx.adapters_out[role]` to each role's new adapter (absolute path)."""
    ctx.engine.release()  # give accelerator memory back before training (vLLM sleeps or shuts down)
    out = {}
    for role in roles or ctx.method.roles:
        free_memory()
        folder = ctx.stage_dir(NAME) / role
        done = stage_done(folder)
        if done and done["summary"].get("deferred") and role not in ctx.defer:
            done = None  # left for later, and later is now
        if done:
            out[role] = done["summary"]
            ctx.adapters_out[role] = layout.absolute(ctx.s.run_dir, done["summary"].get("adapter"))
            continue
        start = time.time()
        recover_adapter(folder)  # killed mid-swap: the previous adapter goes back in place (training/save.py)
        rows, cut = fitting_rows(ctx.trainer, ctx.model_path(), read_jsonl(ctx.stage_dir(source) / f"{role}.jsonl"),
                                 ctx.train_cfg)
        if cut:
            log.warning("round %d: %d %s rows are longer than train.max_length and are not trained on (cut, they "
                        "would lose their end); raise train.max_length if memory allows", ctx.round_no, cut, role)
        previous = ctx.adapters.get(role)
        if rows and role in ctx.defer:
            log.info("round %d: the %s is not trained now: nothing after the last round uses it (it is trained "
                     "when a later round needs it; run.defer_unused=false trains it now)", ctx.round_no, role)
            summary = {"loss": None, "deferred": "unused after the last round", "adapter": None, "rows": len(rows),
                       "seconds": 0.0}
        elif not rows:
            log.warning("round %d: no %s training rows survived the filters; the %s keeps its previous adapter (%s)",
                        ctx.round_no, role, role, previous or "base model")
            summary = {"loss": None, "skipped": "no training rows", "adapter": previous, "seconds": 0.0}
        elif _trained_here(folder):
            # trained, then cut off before done.json: the adapter is complete (it is swapped into place
            # whole before metrics.json is written), so it is used rather than trained twice
            summary = _trained(read_json(folder / "metrics.json"), folder, rows, start, previous)
        else:
            # a crash mid-training leaves checkpoints the trainer resumes from; a stray adapter is redone
            if (folder / "adapter").exists():
                reset_dir(folder / "adapter")
            where = f"round {ctx.round_no}" if ctx.folder is None else ctx.round_dir.name  # final/: "final"
            ui.console.print(f"{where} · training {role} on {len(rows)} rows"
                             f" (from {'round ' + str(ctx.round_no - 1) if previous else 'the base model'})")
            label = f"round_{ctx.round_no:03d}" if ctx.folder is None else ctx.round_dir.name
            with ui.progress(f"{where} · train {role}", 1) as bar, tracking.training(label, role):
                metrics = ctx.trainer(ctx.model_path(), rows, folder, previous, ctx.train_cfg, progress=bar.set)
            summary = _trained(metrics, folder, rows, start, previous)
        summary = {**summary, "adapter": layout.relative(ctx.s.run_dir, summary.get("adapter")),
                   "from": layout.relative(ctx.s.run_dir, previous)}
        if cut:
            summary["rejections"] = {TRUNCATED_ROW: cut}
        free_memory()
        own = summary.get("adapter") == layout.relative(ctx.s.run_dir, str(folder / "adapter"))
        mark_done(folder, adapter_files(folder) if own else [], summary=summary, semantic=ctx.made_with())
        out[role] = summary
        ctx.adapters_out[role] = layout.absolute(ctx.s.run_dir, summary.get("adapter"))
    return out


def _trained_here(folder: Path) -> bool:
    """An adapter and its metrics.json are there, and the adapter is the one those metrics were written for
    (trainers record its digest; one changed since, e.g. by hand, is trained again rather than trusted)."""
    if not ((folder / "metrics.json").exists() and (folder / "adapter" / "adapter_config.json").exists()):
        return False
    from selflengthen.runfolder.records import Metrics
    from selflengthen.runfolder.store import CorruptArtifact, read_record

    try:
        want = read_record(folder / "metrics.json", Metrics).get("adapter_sha256")
    except CorruptArtifact as exc:  # a damaged record of a finished training: train again rather than trust it
        log.warning("%s: training it again", exc)
        return False
    if want and want != adapter_digest(folder / "adapter"):
        log.warning("%s does not match the adapter its training recorded: training it again", folder / "adapter")
        return False
    return True


def _trained(metrics: dict, folder: Path, rows: list, start: float, previous) -> dict:
    """The role's record: the trainer's metrics, where the adapter is, and two times — "seconds" is the
    role's wall time (model loading included), "train_seconds" the optimizer loop alone."""
    return {**metrics, "train_seconds": metrics.get("seconds", 0.0), "adapter": str(folder / "adapter"),
            "rows": len(rows), "seconds": time.time() - start, "from": previous}
