"""The whole job, top to bottom: lock the run folder, check the manifest, then for each round run the
method's stages in order (Self-Lengthen: self-instruct -> initial -> extend -> SFT data -> train), seal the
round with its summary, and after the last round run the method's final stages.

Everything a round needs is read from disk, so a rerun of the same command skips what is finished and
continues what was cut off; a finished run called with a larger `iterations` continues from its last
adapters. The engine is created once and loaded only when a stage actually has to generate.

The last round does not train the roles nothing after it uses (`run.defer_unused`; Self-Lengthen's extender:
the eval, the collection and the final model answer with the generator). Their records say `deferred`, and
`complete_deferred` trains them, from the same rows and parent adapter, before a later round needs them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from selflengthen import cli
from selflengthen.engines import session
from selflengthen.evidence import heldout
from selflengthen.runfolder import layout
from selflengthen.runfolder import manifest as manifest_mod
from selflengthen.engines import ranks
from selflengthen.support import tracking
from selflengthen.support import ui
from selflengthen.methods.base import Method, Stage
from selflengthen.settings import Settings
from selflengthen.stages.common import Handover, RoundContext
from selflengthen.runfolder.store import RunLock, atomic_write_json

log = logging.getLogger(__name__)


def run(s: Settings, engine: Optional[session.LazyEngine] = None,
        model_path: Optional[Callable[[], str]] = None) -> list[dict]:
    """Run (or resume) every round up to `s.iterations`, then the final stages; returns the round summaries."""
    method = s.method
    with RunLock(s.run_dir):
        manifest = manifest_mod.open_run(s, [stage.name for stage in method.stages])
        cli.record_config(s)
        own_engine, own_resolver = session.for_settings(s)
        engine, model_path = engine or own_engine, model_path or own_resolver
        from selflengthen.training import trainer_for

        trainer = trainer_for(s.train_backend)
        summaries, adapters = [], {role: None for role in method.roles}
        ran = False
        tracker = tracking.open_tracker(s)
        try:
            # --- evidence: the base model's held-out eval, once, before round 1 (eval.every_round) ---
            if s.eval.every_round:
                heldout.evaluate_round(s, engine, 0, adapters)
            for r in range(1, s.iterations + 1):
                ctx = RoundContext(s, r, engine, adapters, method, trainer, s.train, model_path,
                                   defer=unused_roles(s, method) if r == s.iterations else ())
                summary = finished_round(s.run_dir, r, method)
                if summary is None:
                    summary = run_round(ctx)
                    manifest_mod.record_round(s.run_dir, manifest, r)
                    ran = True
                else:
                    log.info("round %d is complete on disk: skipped", r)
                if not ctx.defer and deferred(summary):
                    summary = complete_deferred(ctx, summary)
                    ran = True
                adapters = layout.adapters_abs(s.run_dir, summary["adapters_out"])
                summaries.append(summary)
                if tracker.active:
                    tracking.log_round(tracker, summary, _eval_of(s, 0) if summary["round"] == 1 else None)
            if any(getattr(s.sections.get(key), "enabled", False) for st in method.final_stages for key, _ in st.config):
                final_sections: dict = {}
                ran |= run_final(RoundContext(s, s.iterations + 1, engine, adapters, method, trainer, s.train,
                                              model_path, folder=layout.final_dir(s.run_dir)), final_sections)
                if tracker.active:
                    tracking.log_final(tracker, s.iterations, final_sections, _eval_of(s, heldout.FINAL))
        finally:
            engine.close()
            tracker.close()
        _final_report(s, ran)
    return summaries


def unused_roles(s: Settings, method: Method) -> tuple[str, ...]:
    """The roles the last round may leave untrained: every role but the answering one (which the eval, the
    collection and the final stages use), unless run.defer_unused is off."""
    return tuple(role for role in method.roles if role != method.answer_role) if s.run.defer_unused else ()


def deferred(summary: dict) -> dict[str, list[str]]:
    """Stage name -> the roles its section left for later (stages.train), for a sealed round's summary."""
    from selflengthen.stages.train import deferred_roles

    found = {name: deferred_roles(sec) for name, sec in (summary.get("stages") or {}).items() if isinstance(sec, dict)}
    return {name: roles for name, roles in found.items() if roles}


def complete_deferred(ctx: RoundContext, summary: dict) -> dict:
    """Train the roles sealed round `ctx.round_no` left for later, now that something needs them, and
    rewrite its summary with their records and adapters. They start from the round's own input adapters
    (`adapters_in`), as they would have then. Cut off, it resumes: the summary still says deferred until
    the training's own record is done, and the trainer continues from its checkpoints."""
    run_dir, r = ctx.s.run_dir, ctx.round_no
    ctx.adapters = layout.adapters_abs(run_dir, summary["adapters_in"])
    ctx.adapters_out = layout.adapters_abs(run_dir, summary["adapters_out"])
    for name, roles in deferred(summary).items():
        ui.console.print(f"round {r} · training the {', '.join(roles)} it left for later: round {r + 1} needs it")
        section = ctx.method.stage(name).run(ctx)
        summary["stages"][name] = section
        for role in roles:
            if isinstance(section.get(role), dict) and "seconds" in section[role]:
                summary["seconds"][f"{name}_{role}"] = section[role]["seconds"]
    summary["adapters_out"] = layout.adapters_rel(run_dir, ctx.adapters_out)
    atomic_write_json(layout.summary_path(run_dir, r), summary)
    return summary


def run_round(ctx: RoundContext) -> dict:
    """One round: every stage of the method in order, then the summary that seals the round."""
    ui.console.rule(f"[bold]round {ctx.round_no}")
    layout.migrate_round(ctx.s.run_dir, ctx.round_no)
    ctx.engine.set_adapters(ctx.adapters)
    start, generating, loading = time.time(), ctx.engine.generate_seconds, ctx.engine.load_seconds
    sections = run_stages(ctx, ctx.method.stages)
    summary = build_summary(ctx, sections, time.time() - start)
    summary["seconds"].update(_split(summary["seconds"]["round"], ctx.engine.generate_seconds - generating,
                                     ctx.engine.load_seconds - loading, sections))
    # --- evidence: this round's model on the held-out prompts, before the summary seals the round ---
    if ctx.s.eval.every_round:
        doc = heldout.evaluate_round(ctx.s, ctx.engine, ctx.round_no, ctx.adapters_out)
        summary["eval"] = heldout.aggregates_of(doc)
    atomic_write_json(layout.summary_path(ctx.s.run_dir, ctx.round_no), summary)  # written last: round complete
    ui.console.print(ui.round_table(summary, ctx.method))
    return summary


def run_stages(ctx: RoundContext, stages: Sequence[Stage]) -> dict:
    """Run `stages` in order; returns their summary sections. A stage that may start ahead (`Stage.ahead`:
    extension on the initial answers) gets its items started by the stage before it when the engine has
    slots that stage cannot fill (stages.common.Handover), so the engine does not drain between the two."""
    sections = {}
    try:
        for i, stage in enumerate(stages):
            ctx.handover_in, ctx.handover_out = ctx.handover_out, handover_for(ctx, stages[i + 1] if i + 1 < len(stages) else None)
            sections[stage.name] = stage.run(ctx)
            if ctx.handover_in is not None:
                ctx.handover_in.close()
                ctx.handover_in = None
    finally:
        for h in (ctx.handover_in, ctx.handover_out):
            if h is not None:
                h.close()
        ctx.handover_in = ctx.handover_out = None
    return sections


def handover_for(ctx: RoundContext, nxt: Optional[Stage]) -> Optional[Handover]:
    """The handover to `nxt` if it can start ahead here: it says it can, speculation is on (`run.speculate`)
    and one process generates (engine ranks run each stage on its own)."""
    if nxt is None or nxt.ahead is None or not ctx.s.run.speculate or ranks.world_size(ctx) > 1:
        return None
    make = nxt.ahead(ctx)
    return Handover(ctx.engine, make) if make is not None else None


def run_final(ctx: RoundContext, sections: Optional[dict] = None) -> bool:
    """The method's stages after the last round (in `final/`, each switched on by its section's `enabled`), then the
    final model's held-out eval when evals run every round. True when a stage ran. `sections` gets each stage's
    summary section."""
    ui.console.rule("[bold]final model")
    ctx.engine.set_adapters(ctx.adapters)
    done_before = all((ctx.stage_dir(st.name) / "done.json").exists() for st in ctx.method.final_stages)
    sections = {} if sections is None else sections
    sections.update({stage.name: stage.run(ctx) for stage in ctx.method.final_stages})
    if ctx.s.eval.every_round:
        heldout.evaluate_round(ctx.s, ctx.engine, heldout.FINAL, ctx.adapters_out)
    log.info("final stages: %s", "; ".join(f"{st.name}: {st.brief(sections[st.name])}" for st in ctx.method.final_stages))
    return not done_before


def finished_round(run_dir: Path, r: int, method: Method) -> Optional[dict]:
    """Round r's summary if the round is complete: every stage's artifacts still match their done record and
    the adapters it produced are still there. A damaged stage is redone with every stage after it."""
    layout.migrate_round(run_dir, r)
    summary = layout.read_summary(run_dir, r)
    if summary is None:
        return None
    damaged = layout.round_damage(run_dir, r, summary)
    if damaged:
        log.warning("round %d: the %s stage's artifacts no longer match its record: redoing it and the stages "
                    "after it", r, damaged)
        _redo_from(run_dir, r, method, damaged.split("/")[0])
        return None
    for role in method.roles:  # the adapters the next round will use must still be there
        folder = layout.absolute(run_dir, summary["adapters_out"].get(role))
        if folder and not (Path(folder) / "adapter_config.json").exists():
            log.warning("round %d: its %s adapter %s is missing: redoing what is needed", r, role, folder)
            layout.summary_path(run_dir, r).unlink(missing_ok=True)
            return None
    return summary


def _redo_from(run_dir: Path, r: int, method: Method, stage: str) -> None:
    """Unseal round r and drop the done records of `stage` and of every stage after it, so they run again
    (each from its own item log where it has one: nothing already generated is generated twice)."""
    from selflengthen.runfolder.store import DONE

    layout.summary_path(run_dir, r).unlink(missing_ok=True)
    names = [st.name for st in method.stages]
    for name in names[names.index(stage):] if stage in names else names:
        folder = layout.stage_dir(run_dir, r, name)
        for marker in [folder / DONE, *folder.glob(f"*/{DONE}")]:
            marker.unlink(missing_ok=True)


def _final_report(s: Settings, ran: bool) -> None:
    """--- evidence: the table of every round, and the plots when they changed or are missing. A finished
    run never fails because of a plot: any error here is a warning. ---"""
    try:
        from selflengthen.evidence import tables

        tables.print_report(tables.build_report(s.run_dir, s.method))
        plots_dir = layout.report_dir(s.run_dir)
        if s.plots and (ran or not all((plots_dir / name).exists() for name in tables.PLOTS)):
            tables.write_report(s.run_dir, s.method, show=False)
    except Exception as exc:  # noqa: BLE001 — reporting is best effort by design
        log.warning("could not write the report (%s: %s); the run itself is complete. "
                    "Retry with python -m selflengthen report", type(exc).__name__, exc)


def _split(wall: float, generate: float, load: float, sections: dict) -> dict:
    """Where the round's wall time went: engine generate() calls, optimizer loops, and the rest — data I/O,
    filtering, sampling and every model load (engine and trainer) — which is the orchestration overhead."""
    train = sum(t.get("train_seconds") or 0.0 for sec in sections.values() if isinstance(sec, dict)
                for t in sec.values() if isinstance(t, dict))
    overhead = max(0.0, wall - generate - train)
    return {"generate": generate, "train_steps": train, "engine_load": load, "overhead": overhead,
            "overhead_share": overhead / wall if wall else 0.0}


def build_summary(ctx: RoundContext, sections: dict[str, dict], wall: float) -> dict:
    """The round's record, assembled from the stages' own sections: nothing here names a stage."""
    rejections: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for name, sec in sections.items():
        parts = [sec] if "seconds" in sec else [sec] + [p for p in sec.values() if isinstance(p, dict)]
        for part in parts:  # a stage with one section per role (train) counts its roles' rejections
            for k, v in (part.get("rejections") or {}).items():
                rejections[k] = rejections.get(k, 0) + v
        if "seconds" in sec:
            seconds[name] = sec["seconds"]
        else:  # a stage with one section per role (train): its roles' times
            for role, part in sec.items():
                if isinstance(part, dict) and "seconds" in part:
                    seconds[f"{name}_{role}"] = part["seconds"]
    return {
        "round": ctx.round_no,
        "method": ctx.method.name,
        "stages": sections,
        "rejections": rejections,
        "adapters_in": layout.adapters_rel(ctx.s.run_dir, ctx.adapters),
        "adapters_out": layout.adapters_rel(ctx.s.run_dir, ctx.adapters_out),
        "seconds": {**seconds, "round": wall},
        "semantic": ctx.s.semantic,  # what made the round: drift is checked from here when manifest.json is gone
    }


def _eval_of(s: Settings, r) -> Optional[dict]:
    """Round r's stored eval aggregates (0 = the base model, heldout.FINAL), for the tracker; None when absent."""
    import json

    try:
        return heldout.aggregates_of(json.loads(heldout.eval_file(s.run_dir, r).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
