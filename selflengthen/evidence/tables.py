"""The evidence of a run in one place: a table of every round and three plots, from the artifacts alone.

`build_report(run_dir, method)` reads each round's summary and the eval files (nothing is recomputed, no
model is loaded); every stage's line comes from the stage itself (`Stage.brief` on its summary section), so a
new stage or method shows up without editing this file. `print_report` shows it as rich tables;
`plot_report(run_dir, method)` draws, under `iterations/<run>/report/`:

- `lengths.png`: length distribution per round of every stage that declares a `lengths` artifact
  (Self-Lengthen: initial answers vs extended ones);
- `eval.png`: held-out mean/median words and length score (and S_l / 100) per round, round 0 = base model;
- `requested_vs_generated.png`: requested vs generated length per held-out prompt, log-log, with the
  y = x line (as LongBench-Write draws it), one colour per round;
- `grpo.png`, when the run trained with GRPO (`method=lwzero`, `rl.enabled`): each reward's group mean and
  the answer length per optimizer step, from every GRPO `metrics.jsonl` of the rounds and the RL stage.

`python -m selflengthen report [the run's overrides]` does all three and writes `report/report.json`.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Optional

from selflengthen.runfolder import layout
from selflengthen.methods.base import method_of
from selflengthen.runfolder.records import EvalDoc, ExportDone
from selflengthen.runfolder.store import CorruptArtifact, atomic_write_bytes, atomic_write_json, check_folder, read_jsonl, read_record

log = logging.getLogger(__name__)

REPORT_DIR = layout.REPORT_DIR
PLOTS = ("lengths.png", "eval.png", "requested_vs_generated.png")  # always drawn
GRPO_PLOT = "grpo.png"  # drawn when the run has GRPO training logs


# --- numbers ------------------------------------------------------------------------------------------

def _summaries(run_dir: Path) -> list[dict]:
    return list(layout.finished_rounds(run_dir).values())


def _evals(run_dir: Path) -> dict[int, dict]:
    """Round -> eval document (with rows), for every eval file on disk (the newest per round)."""
    out = {}
    check_folder(layout.eval_dir(run_dir))
    paths = sorted(layout.eval_dir(run_dir).glob("round_*.json")) + sorted(layout.eval_dir(run_dir).glob("final.json"))
    for path in paths:
        try:
            doc = read_record(path, EvalDoc)
            out[doc["round"]] = doc
        except CorruptArtifact as exc:  # a damaged eval file is left out of the report, not fatal
            log.warning("%s — left out of the report", exc)
    return out


EVAL_KEYS = ("n", "mean_words", "median_words", "max_words", "repetition_pass_rate", "length_score", "s_l",
             "open", "constrained", "s_q")


def _round_row(s: dict, ev: Optional[dict], method) -> dict:
    sections = s.get("stages", {})
    ev = ev or s.get("eval")
    return {
        "round": s["round"],
        "stages": {st.name: st.brief(sections.get(st.name) or {}) for st in method.stages} if sections else {},
        "sections": sections,
        "rejections": dict(s.get("rejections", {})),
        "eval": None if ev is None else {k: ev[k] for k in EVAL_KEYS if k in ev},
        "seconds": dict(s.get("seconds", {})),
    }


def build_report(run_dir: Path, method=None) -> dict:
    """Everything the tables and the plots show, as plain JSON-able data."""
    run_dir = Path(run_dir)
    method = method or method_of(run_dir)
    evals = _evals(run_dir)
    rounds = [_round_row(s, evals.get(s["round"]), method) for s in _summaries(run_dir)]
    base, final = evals.get(0), evals.get("final")
    export = layout.export_dir(run_dir) / "done.json"
    return {
        "run": run_dir.name, "run_dir": str(run_dir), "method": method.name, "rounds": rounds,
        "base_eval": None if base is None else _round_row({"round": 0}, base, method)["eval"],
        "final_eval": None if final is None else _round_row({"round": "final"}, final, method)["eval"],
        "export": _export_summary(export),
    }


def _export_summary(path: Path) -> Optional[dict]:
    """The export's summary from its done record, or None (none yet, or damaged: reported, left out)."""
    check_folder(path.parent)
    if not os.path.lexists(path):
        return None
    try:
        return read_record(path, ExportDone)["summary"]
    except CorruptArtifact as exc:
        log.warning("%s — the export is left out of the report", exc)
        return None


# --- table --------------------------------------------------------------------------------------------

def _num(x, fmt: str, empty: str = "–") -> str:
    return empty if x is None else format(x, fmt)


def _dur(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 6000 else f"{seconds / 3600:.1f}h"


def report_table(report: dict):
    """One line per round and stage: what the stage made (its own brief) and how long it took."""
    from rich import box
    from rich.table import Table

    t = Table(title=f"{report.get('method', 'selflengthen')} run {report['run']}", header_style="bold",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (("round", "right"), ("stage", "left"), ("result", "left"), ("time", "right")):
        t.add_column(col, justify=justify)
    for r in report["rounds"]:
        sec = r["seconds"]
        for i, (name, brief) in enumerate(r["stages"].items()):
            seconds = sec.get(name, sum(v for k, v in sec.items() if k.startswith(name + "_")))
            t.add_row(str(r["round"]) if i == 0 else "", name.replace("_", " "), brief, _dur(seconds),
                      end_section=i == len(r["stages"]) - 1)
    return t


def eval_table(report: dict):
    """Held-out eval per round, round 0 = the base model (None when no round has been evaluated)."""
    from selflengthen.evidence.heldout import table

    evals = {r["round"]: r["eval"] for r in report["rounds"] if r["eval"]}
    if report.get("base_eval"):
        evals[0] = report["base_eval"]
    if report.get("final_eval"):
        evals["final"] = report["final_eval"]
    return table(evals) if evals else None


def rejection_table(report: dict):
    """Rejected samples per round and reason (initial + extension), the most frequent reasons first."""
    from rich import box
    from rich.table import Table

    totals: dict[str, int] = {}
    for r in report["rounds"]:
        for k, v in r["rejections"].items():
            totals[k] = totals.get(k, 0) + v
    reasons = sorted(totals, key=lambda k: -totals[k])
    t = Table(title="Rejections by reason", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("round", justify="right")
    for reason in reasons:
        t.add_column(reason.replace("_", " "), justify="right")
    for r in report["rounds"]:
        t.add_row(str(r["round"]), *(str(r["rejections"].get(k, 0)) for k in reasons))
    return t


def print_report(report: dict, console=None) -> None:
    from selflengthen.support import ui

    console = console or ui.console
    console.print(report_table(report))
    if (ev := eval_table(report)) is not None:
        console.print(ev)
    if any(r["rejections"] for r in report["rounds"]):
        console.print(rejection_table(report))


# --- plots --------------------------------------------------------------------------------------------

def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)  # margins are set per figure: "tight" would draw it twice
    atomic_write_bytes(path, buf.getvalue())
    return path


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def _plot_lengths(run_dir: Path, rounds: list[int], path: Path, method) -> Path:
    from matplotlib.figure import Figure

    series = [st for st in method.stages if st.lengths]  # stages whose artifact rows carry "words"
    width = 0.8 / max(1, len(series))
    fig = Figure(figsize=(max(5, 1.4 * len(rounds) + 2), 4))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.9)
    ax = fig.add_subplot()
    data, positions, colours = [], [], []
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for r in rounds:
        for i, st in enumerate(series):
            f = layout.stage_dir(run_dir, r, st.name) / st.lengths
            words = [row["words"] for row in read_jsonl(f)] if f.exists() else []
            if words:
                data.append(words)
                positions.append(r - 0.4 + width * (i + 0.5))
                colours.append(palette[i % len(palette)])
    if data:
        parts = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, manage_ticks=False)
        for box, colour in zip(parts["boxes"], colours):
            box.set_facecolor(colour)
            box.set_alpha(0.6)
        ax.set_xticks(rounds)
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=palette[i % len(palette)], alpha=0.6, label=st.label or st.name)
                           for i, st in enumerate(series)], loc="best")
    else:
        _note(ax, "no round data yet")
    ax.set_xlabel("round")
    ax.set_ylabel("words per response")
    ax.set_title("Response length per round, by stage")
    return _save(fig, path)


def eval_series(evals: dict) -> dict:
    """What the eval plot draws: one x position per evaluated round (0 = the base model), then the final model
    (labelled "final", one step right of the last round) when it was evaluated. Lengths are the open prompts'
    when the eval has them (they show the natural length), else all prompts'; length score and S_l are the
    constrained prompts' (the eval averages them over those only); the filter pass rate is drawn per group, so
    a model that degenerates on open prompts is not hidden by the constrained ones. A missing value is NaN (a
    gap in the line, never a crash)."""
    rounds = sorted(r for r in evals if isinstance(r, int))
    keys = rounds + (["final"] if "final" in evals else [])
    xs = rounds + ([(rounds[-1] if rounds else 0) + 1] if "final" in evals else [])
    has_open = any((evals[k].get("open") or {}).get("n") for k in keys)
    has_constrained = any((evals[k].get("constrained") or {}).get("n") for k in keys)

    def series(group: str | None, key: str, scale: float = 1.0) -> list[float]:
        out = []
        for k in keys:
            src = evals[k].get(group) if group and isinstance(evals[k].get(group), dict) else evals[k]
            v = src.get(key) if src else None
            out.append(float("nan") if v is None else v * scale)
        return out

    group = "open" if has_open else None
    words = {("mean (open prompts)" if has_open else "mean"): series(group, "mean_words"),
             "median": series(group, "median_words")}
    scores = {"length score": series(None, "length_score"), "S_l / 100": series(None, "s_l", 0.01)}
    if has_open and has_constrained:
        scores["filter pass, open"] = series("open", "repetition_pass_rate")
        scores["filter pass, constrained"] = series("constrained", "repetition_pass_rate")
    else:
        scores["filter pass rate"] = series(None, "repetition_pass_rate")
    return {"x": xs, "labels": [str(k) for k in keys], "words": words, "scores": scores}


def _plot_eval(evals: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.2)
    words_ax, score_ax = fig.subplots(1, 2)
    data = eval_series(evals)
    if data["x"]:
        styles = ("o-", "s--", "^:", "v-.", "d:")
        for ax, lines in ((words_ax, data["words"]), (score_ax, data["scores"])):
            for style, (label, ys) in zip(styles, lines.items()):
                ax.plot(data["x"], ys, style, label=label)
            ax.set_xticks(data["x"], data["labels"])
            ax.legend(fontsize=8)
        score_ax.set_ylim(-0.02, 1.02)
    else:
        for ax in (words_ax, score_ax):
            _note(ax, "no held-out eval yet:\npython -m selflengthen eval")
    words_ax.set_title("Held-out answer length")
    words_ax.set_xlabel("round (0 = base model)")
    words_ax.set_ylabel("words")
    score_ax.set_title("Following the requested length")
    score_ax.set_xlabel("round (0 = base model)")
    return _save(fig, path)


def _requested(row: dict) -> float:
    return (row["low"] + row["high"]) / 2 if row["type"] == "range" else float(row["target"])


def _plot_requested(evals: dict[int, dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.11, top=0.93)
    ax = fig.add_subplot()
    order = sorted(evals, key=lambda r: (isinstance(r, str), r))
    points = [(r, _requested(row), max(1, row["words"])) for r in order for row in evals[r].get("rows", [])
              if row.get("type") not in (None, "none")]  # open prompts ask for no length
    if points:
        import matplotlib
        from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

        rounds = order
        many = len(rounds) > 10
        cmap = matplotlib.colormaps["viridis" if many else "tab10"]
        for i, r in enumerate(rounds):
            xs = [x for rr, x, _ in points if rr == r]
            ys = [y for rr, _, y in points if rr == r]
            ax.scatter(xs, ys, s=18, alpha=0.75, color=cmap(i / (len(rounds) - 1) if many else i),
                       label="round 0 (base)" if r == 0 else (f"round {r}" if isinstance(r, int) else str(r)))
        lo = min(min(x for _, x, _ in points), min(y for _, _, y in points)) * 0.8
        hi = max(max(x for _, x, _ in points), max(y for _, _, y in points)) * 1.25
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="y = x")
        ticks = [m * 10 ** e for e in range(0, 7) for m in (1, 2, 5) if lo <= m * 10 ** e <= hi]
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers at 1-2-5 steps, not 10^x labels on every minor tick
            axis.set_major_locator(FixedLocator(ticks))
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(fontsize=8)
    else:
        _note(ax, "no held-out eval yet:\npython -m selflengthen eval")
    ax.set_xlabel("requested length (words; range: midpoint)")
    ax.set_ylabel("generated length (words)")
    ax.set_title("Requested vs generated length")
    return _save(fig, path)


def grpo_logs(run_dir: Path) -> list[tuple[str, list[dict]]]:
    """(label, per-step metrics) of every GRPO training in the run, in training order: each finished round's
    `train/<role>/metrics.jsonl` (method=lwzero), then the RL stage's (`final/rl/<role>/`). A log without
    reward columns (not GRPO) is left out."""
    run_dir = Path(run_dir)
    found = [(f"round {s['round']} {p.parent.name}", p) for s in _summaries(run_dir)
             for p in sorted(layout.stage_dir(run_dir, s["round"], "train").glob("*/metrics.jsonl"))]
    found += [(f"rl {p.parent.name}", p) for p in sorted((layout.final_dir(run_dir) / "rl").glob("*/metrics.jsonl"))]
    out = []
    for label, path in found:
        rows = [r for r in read_jsonl(path) if any(k.startswith("rewards/") for k in r)]
        if rows:
            out.append((label, rows))
    return out


def _plot_grpo(logs: list[tuple[str, list[dict]]], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.22)
    reward_ax, words_ax = fig.subplots(1, 2)
    names = sorted({k.split("/")[1] for _, rows in logs for r in rows for k in r if k.startswith("rewards/")})
    step, xs, edges = 0, [], []
    for label, rows in logs:  # one x axis over all trainings, a dotted line where each starts
        edges.append((step + 0.5, label))
        xs.append([step + i + 1 for i in range(len(rows))])
        step += len(rows)
    for name in names:
        key = f"rewards/{name}/mean"
        reward_ax.plot([x for xx in xs for x in xx], [r.get(key, float("nan")) for _, rows in logs for r in rows],
                       ".-", label=name, linewidth=1)
    words_ax.plot([x for xx in xs for x in xx], [r.get("answer_words", float("nan")) for _, rows in logs for r in rows],
                  ".-", color="tab:purple", linewidth=1, label="answer words (mean of the group)")
    for ax in (reward_ax, words_ax):
        for x, label in edges[1:] if len(edges) > 1 else []:
            ax.axvline(x, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("GRPO step" + (" (" + ", ".join(label for _, label in edges) + ")" if len(edges) > 1 else ""))
        ax.legend(fontsize=8)
    reward_ax.set_ylim(-0.02, 1.02)
    reward_ax.set_title("Rewards per step (group mean)")
    words_ax.set_title("Answer length per step")
    words_ax.set_ylabel("words")
    return _save(fig, path)


def plot_report(run_dir: Path, method=None) -> list[Path]:
    """Write the PNGs under `report/` (atomically): the three of PLOTS, and the GRPO plot when the run has
    GRPO training logs; returns their paths."""
    run_dir = Path(run_dir)
    method = method or method_of(run_dir)
    out = layout.report_dir(run_dir)
    rounds = [s["round"] for s in _summaries(run_dir)]
    evals = _evals(run_dir)
    paths = [_plot_lengths(run_dir, rounds, out / PLOTS[0], method), _plot_eval(evals, out / PLOTS[1]),
             _plot_requested(evals, out / PLOTS[2])]
    logs = grpo_logs(run_dir)
    if logs:
        paths.append(_plot_grpo(logs, out / GRPO_PLOT))
    return paths


def write_report(run_dir: Path, method=None, show: bool = True) -> dict:
    """`report/report.json` and the plots (and the tables on the console if `show`)."""
    method = method or method_of(Path(run_dir))
    report = build_report(run_dir, method)
    if show:
        print_report(report)
    report["plots"] = [str(Path(p).relative_to(run_dir)) for p in plot_report(run_dir, method)]
    atomic_write_json(layout.report_dir(run_dir) / "report.json", report)
    return report

