"""The whole Self-Lengthen job, top to bottom: lock the run folder, check the manifest, then for each round
self-instruct -> initial responses -> two-stage extension -> SFT data -> train both roles -> summary.

Everything a round needs is read from disk, so a rerun of the same command skips what is finished and
continues what was cut off; a finished run called with a larger `iterations` continues from its last
adapters. The engine is created once and loaded only when a stage actually has to generate.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

from selflengthen import evaluate
from selflengthen import manifest as manifest_mod
from selflengthen import ui
from selflengthen.methods.selflengthen import ROLES
from selflengthen.settings import Settings
from selflengthen.stages import extend, finetune, initial, self_instruct, sft_data
from selflengthen.stages.common import RoundContext
from selflengthen.store import RunLock, atomic_write_json, read_json

log = logging.getLogger(__name__)
SUMMARY = "summary.json"


class LazyEngine:
    """Creates and loads the real engine on first use, so a resumed run whose generation is already done
    never pays for loading a model; remembers the adapters to apply once it is loaded."""

    def __init__(self, engine_cfg: dict, model_path: Callable[[], str]):
        self.cfg, self._model_path = engine_cfg, model_path
        self.inner = None
        self.adapters: dict = {}
        self.load_seconds = 0.0
        self.generate_seconds = 0.0  # inside the engine's generate(), loading excluded: the overhead bench's split

    def set_adapters(self, adapters: dict) -> None:
        self.adapters = dict(adapters)
        if self.inner is not None:
            self.inner.set_adapters(self.adapters)

    def generate(self, requests, progress=None):
        if not requests:
            return []
        if self.inner is None:
            from selflengthen.engines import make_engine

            start = time.time()
            self.inner = make_engine(self.cfg, self._model_path())
            self.inner.load()
            self.inner.set_adapters(self.adapters)
            self.load_seconds += time.time() - start
        start = time.time()
        try:
            return self.inner.generate(requests, progress)
        finally:
            self.generate_seconds += time.time() - start

    def release(self) -> None:
        if self.inner is not None:
            self.inner.release()

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None


def run(s: Settings, engine: Optional[LazyEngine] = None,
        model_path: Optional[Callable[[], str]] = None) -> list[dict]:
    """Run (or resume) every round up to `s.iterations`; returns the round summaries."""
    with RunLock(s.run_dir):
        manifest = manifest_mod.open_run(s)
        model_path = model_path or model_resolver(s)
        engine = engine or LazyEngine(s.engine, model_path)
        from selflengthen.training import make_trainer

        trainer, train_cfg = make_trainer(s.train)
        summaries, adapters = [], {role: None for role in ROLES}
        ran = False
        try:
            # --- evidence: the base model's held-out eval, once, before round 1 (eval.every_round) ---
            if s.eval.every_round:
                evaluate.evaluate_round(s, engine, 0, adapters)
            for r in range(1, s.iterations + 1):
                summary = _finished_round(s.run_dir, r)
                if summary is None:
                    summary = run_round(RoundContext(s, r, engine, adapters), trainer, train_cfg, model_path)
                    manifest_mod.record_round(s.run_dir, manifest, r)
                    ran = True
                else:
                    log.info("round %d is complete on disk: skipped", r)
                adapters = summary["adapters_out"]
                summaries.append(summary)
        finally:
            engine.close()
        _final_report(s.run_dir, ran, s.plots)
    return summaries


def _final_report(run_dir: Path, ran: bool, plots: bool = True) -> None:
    """--- evidence: the table of every round, and the plots when they changed or are missing. A finished
    run never fails because of a plot: any error here is a warning. ---"""
    try:
        from selflengthen import report

        report.print_report(report.build_report(run_dir))
        if plots and (ran or not all((run_dir / report.REPORT_DIR / name).exists() for name in report.PLOTS)):
            report.write_report(run_dir, show=False)
    except Exception as exc:  # noqa: BLE001 — reporting is best effort by design
        log.warning("could not write the report (%s: %s); the run itself is complete. "
                    "Retry with python -m selflengthen.report", type(exc).__name__, exc)


def model_resolver(s: Settings) -> Callable[[], str]:
    cache: dict = {}

    def resolve() -> str:
        if "path" not in cache:
            from selflengthen.models import resolve_model_path

            cache["path"] = resolve_model_path(s.model_path, s.model_cache)
        return cache["path"]
    return resolve


def _finished_round(run_dir: Path, r: int) -> Optional[dict]:
    path = run_dir / f"round_{r:03d}" / SUMMARY
    if not path.exists():
        return None
    try:
        summary = read_json(path)
        for role in ROLES:  # the adapters the next round will use must still be there
            folder = summary["adapters_out"][role]
            if folder and not (Path(folder) / "adapter_config.json").exists():
                raise FileNotFoundError(f"{folder} is missing")
        return summary
    except Exception as exc:  # a damaged summary is redone from the stages' own records
        log.warning("round %d summary is not usable (%s): rebuilding it", r, exc)
        path.unlink(missing_ok=True)
        return None


def run_round(ctx: RoundContext, trainer: Callable, train_cfg, model_path: Callable[[], str]) -> dict:
    ui.console.rule(f"[bold]round {ctx.round_no}")
    ctx.engine.set_adapters(ctx.adapters)
    start, generating, loading = time.time(), ctx.engine.generate_seconds, ctx.engine.load_seconds
    si = self_instruct.run(ctx)
    ini = initial.run(ctx)
    ext = extend.run(ctx)
    sft = sft_data.run(ctx)
    ctx.engine.release()  # give accelerator memory back before training (vLLM sleeps or shuts down)
    trained = finetune.run(ctx, trainer, model_path, train_cfg)

    summary = build_summary(ctx, si, ini, ext, sft, trained, time.time() - start)
    summary["seconds"].update(_split(summary["seconds"]["round"], ctx.engine.generate_seconds - generating,
                                     ctx.engine.load_seconds - loading, trained))
    # --- evidence: this round's generator on the held-out prompts, before the summary seals the round ---
    if ctx.s.eval.every_round:
        doc = evaluate.evaluate_round(ctx.s, ctx.engine, ctx.round_no, summary["adapters_out"])
        summary["eval"] = evaluate.aggregates_of(doc)
    atomic_write_json(ctx.round_dir / SUMMARY, summary)  # written last: the round is complete
    ui.console.print(ui.round_table(summary))
    return summary


def _split(wall: float, generate: float, load: float, trained: dict) -> dict:
    """Where the round's wall time went: engine generate() calls, optimizer loops, and the rest — data I/O,
    filtering, sampling and every model load (engine and trainer) — which is the orchestration overhead."""
    train = sum(t.get("train_seconds") or 0.0 for t in trained.values())
    overhead = max(0.0, wall - generate - train)
    return {"generate": generate, "train_steps": train, "engine_load": load, "overhead": overhead,
            "overhead_share": overhead / wall if wall else 0.0}


def build_summary(ctx: RoundContext, si: dict, ini: dict, ext: dict, sft: dict, trained: dict, wall: float) -> dict:
    rejections: dict[str, int] = {}
    for part in (ini["rejections"], ext["rejections"]):
        for k, v in part.items():
            rejections[k] = rejections.get(k, 0) + v
    return {
        "round": ctx.round_no,
        "instructions": si["instructions"],
        "instructions_from_pool": si.get("from_pool", 0),
        "initial": {k: ini[k] for k in ("items", "passed", "kept", "mean_words")},
        "extended": {k: ext[k] for k in ("items", "passed", "kept", "mean_words", "mean_growth")},
        "growth": ext["mean_words"] / ini["mean_words"] if ini["mean_words"] else 0.0,
        "rejections": rejections,
        "rejections_by_stage": {"self_instruct": si["rejections"], "initial": ini["rejections"],
                                "extend": ext["rejections"]},
        "sft": {"rows": sft["rows"]},
        "train": {role: {k: v for k, v in t.items() if k != "adapter"} for role, t in trained.items()},
        "adapters_in": dict(ctx.adapters),
        "adapters_out": {role: trained[role]["adapter"] for role in ROLES},
        "seconds": {"self_instruct": si["seconds"], "initial": ini["seconds"], "extend": ext["seconds"],
                    "sft_data": sft["seconds"], **{f"train_{r}": trained[r]["seconds"] for r in ROLES},
                    "round": wall},
    }
