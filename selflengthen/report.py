"""The evidence of a run in one place: a table of every round and three plots, from the artifacts alone.

`build_report(run_dir)` reads each `round_NNN/summary.json` and `eval/round_NNN.json` (nothing is
recomputed, no model is loaded); `print_report` shows it as a rich table; `plot_report(run_dir)` draws,
under `iterations/<run>/report/`:

- `lengths.png`: length distribution per round, initial answers vs extended ones
  (`02_initial/responses.jsonl`, `03_extend/extended.jsonl`);
- `eval.png`: held-out mean/median words and length score (and S_l / 100) per round, round 0 = base model;
- `requested_vs_generated.png`: requested vs generated length per held-out prompt, log-log, with the
  y = x line (as LongBench-Write draws it), one colour per round.

`python -m selflengthen.report [the run's overrides]` does all three and writes `report/report.json`.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Optional

from selflengthen.store import atomic_write_bytes, atomic_write_json, read_json, read_jsonl

log = logging.getLogger(__name__)

REPORT_DIR = "report"
PLOTS = ("lengths.png", "eval.png", "requested_vs_generated.png")


# --- numbers ------------------------------------------------------------------------------------------

def _summaries(run_dir: Path) -> list[dict]:
    out, r = [], 1
    while (path := run_dir / f"round_{r:03d}" / "summary.json").exists():
        out.append(read_json(path))
        r += 1
    return out


def _evals(run_dir: Path) -> dict[int, dict]:
    """Round -> eval document (with rows), for every eval file on disk."""
    out = {}
    for path in sorted((run_dir / "eval").glob("round_*.json")):
        try:
            doc = read_json(path)
            out[int(doc["round"])] = doc
        except Exception as exc:  # a damaged eval file is left out of the report, not fatal
            log.warning("%s is not readable (%s): left out of the report", path, exc)
    return out


def _round_row(s: dict, ev: Optional[dict]) -> dict:
    ini, ext = s.get("initial", {}), s.get("extended", {})
    train = s.get("train", {})
    ev = ev or s.get("eval")
    return {
        "round": s["round"], "instructions": s.get("instructions", 0),
        "initial_kept": ini.get("kept", 0), "extended_kept": ext.get("kept", 0),
        "initial_mean_words": ini.get("mean_words", 0.0), "extended_mean_words": ext.get("mean_words", 0.0),
        "growth": s.get("growth", 0.0), "rejections": dict(s.get("rejections", {})),
        "loss_generator": train.get("generator", {}).get("loss"), "loss_extender": train.get("extender", {}).get("loss"),
        "eval": None if ev is None else {k: ev[k] for k in ("n", "mean_words", "median_words", "repetition_pass_rate",
                                                            "length_score", "s_l") if k in ev},
        "seconds": dict(s.get("seconds", {})),
    }


def build_report(run_dir: Path) -> dict:
    """Everything the table and the plots show, as plain JSON-able data."""
    run_dir = Path(run_dir)
    evals = _evals(run_dir)
    rounds = [_round_row(s, evals.get(s["round"])) for s in _summaries(run_dir)]
    base = evals.get(0)
    export = run_dir / "export" / "done.json"
    return {
        "run": run_dir.name, "run_dir": str(run_dir), "rounds": rounds,
        "base_eval": None if base is None else _round_row({"round": 0}, base)["eval"],
        "export": read_json(export).get("summary") if export.exists() else None,
    }


# --- table --------------------------------------------------------------------------------------------

def _num(x, fmt: str, empty: str = "–") -> str:
    return empty if x is None else format(x, fmt)


def _dur(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 6000 else f"{seconds / 3600:.1f}h"


def report_table(report: dict):
    """One row per round: data made, growth, training loss, stage times (the eval has its own table)."""
    from rich import box
    from rich.table import Table

    t = Table(title=f"Self-Lengthen run {report['run']}", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("round", "instr.", "kept\nini/ext", "mean words\nini→ext", "growth", "loss\ngen/ext",
                "time\nsi/ini/ext/tr"):
        t.add_column(col, justify="right")
    for r in report["rounds"]:
        sec = r["seconds"]
        train = sec.get("train_generator", 0) + sec.get("train_extender", 0)
        t.add_row(str(r["round"]), str(r["instructions"]), f"{r['initial_kept']}/{r['extended_kept']}",
                  f"{r['initial_mean_words']:.0f}→{r['extended_mean_words']:.0f}", f"{r['growth']:.2f}x",
                  f"{_num(r['loss_generator'], '.3f')}/{_num(r['loss_extender'], '.3f')}",
                  "/".join(_dur(sec.get(k, 0)) for k in ("self_instruct", "initial", "extend")) + f"/{_dur(train)}")
    return t


def eval_table(report: dict):
    """Held-out eval per round, round 0 = the base model (None when no round has been evaluated)."""
    from selflengthen.evaluate import table

    evals = {r["round"]: r["eval"] for r in report["rounds"] if r["eval"]}
    if report.get("base_eval"):
        evals[0] = report["base_eval"]
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
    from selflengthen import ui

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


def _plot_lengths(run_dir: Path, rounds: list[int], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5, 1.4 * len(rounds) + 2), 4))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.9)
    ax = fig.add_subplot()
    data, positions, colours = [], [], []
    for r in rounds:
        rd = run_dir / f"round_{r:03d}"
        for offset, name, colour in ((-0.2, "02_initial/responses.jsonl", "tab:blue"),
                                     (0.2, "03_extend/extended.jsonl", "tab:orange")):
            f = rd / name
            words = [row["words"] for row in read_jsonl(f)] if f.exists() else []
            if words:
                data.append(words)
                positions.append(r + offset)
                colours.append(colour)
    if data:
        parts = ax.boxplot(data, positions=positions, widths=0.35, patch_artist=True, manage_ticks=False)
        for box, colour in zip(parts["boxes"], colours):
            box.set_facecolor(colour)
            box.set_alpha(0.6)
        ax.set_xticks(rounds)
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color="tab:blue", alpha=0.6, label="initial"),
                           Patch(color="tab:orange", alpha=0.6, label="extended")], loc="best")
    else:
        _note(ax, "no round data yet")
    ax.set_xlabel("round")
    ax.set_ylabel("words per response")
    ax.set_title("Response length per round: initial vs extended")
    return _save(fig, path)


def _plot_eval(evals: dict[int, dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.2)
    words_ax, score_ax = fig.subplots(1, 2)
    rounds = sorted(evals)
    if rounds:
        words_ax.plot(rounds, [evals[r]["mean_words"] for r in rounds], "o-", label="mean")
        words_ax.plot(rounds, [evals[r]["median_words"] for r in rounds], "s--", label="median")
        words_ax.legend()
        score_ax.plot(rounds, [evals[r]["length_score"] for r in rounds], "o-", label="length score")
        score_ax.plot(rounds, [evals[r]["s_l"] / 100 for r in rounds], "s--", label="S_l / 100")
        score_ax.plot(rounds, [evals[r]["repetition_pass_rate"] for r in rounds], "^:", label="filter pass rate")
        score_ax.set_ylim(-0.02, 1.02)
        score_ax.legend()
        for ax in (words_ax, score_ax):
            ax.set_xticks(rounds)
    else:
        for ax in (words_ax, score_ax):
            _note(ax, "no held-out eval yet:\npython -m selflengthen.eval")
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
    points = [(r, _requested(row), max(1, row["words"])) for r in sorted(evals) for row in evals[r].get("rows", [])]
    if points:
        import matplotlib
        from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

        rounds = sorted(evals)
        many = len(rounds) > 10
        cmap = matplotlib.colormaps["viridis" if many else "tab10"]
        for i, r in enumerate(rounds):
            xs = [x for rr, x, _ in points if rr == r]
            ys = [y for rr, _, y in points if rr == r]
            ax.scatter(xs, ys, s=18, alpha=0.75, color=cmap(i / (len(rounds) - 1) if many else i),
                       label="round 0 (base)" if r == 0 else f"round {r}")
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
        _note(ax, "no held-out eval yet:\npython -m selflengthen.eval")
    ax.set_xlabel("requested length (words; range: midpoint)")
    ax.set_ylabel("generated length (words)")
    ax.set_title("Requested vs generated length")
    return _save(fig, path)


def plot_report(run_dir: Path) -> list[Path]:
    """Write the three PNGs under `report/` (atomically); returns their paths."""
    run_dir = Path(run_dir)
    out = run_dir / REPORT_DIR
    rounds = [s["round"] for s in _summaries(run_dir)]
    evals = _evals(run_dir)
    return [_plot_lengths(run_dir, rounds, out / PLOTS[0]), _plot_eval(evals, out / PLOTS[1]),
            _plot_requested(evals, out / PLOTS[2])]


def write_report(run_dir: Path, show: bool = True) -> dict:
    """`report/report.json` and the plots (and the tables on the console if `show`)."""
    report = build_report(run_dir)
    if show:
        print_report(report)
    report["plots"] = [str(Path(p).relative_to(run_dir)) for p in plot_report(run_dir)]
    atomic_write_json(Path(run_dir) / REPORT_DIR / "report.json", report)
    return report


if __name__ == "__main__":
    from selflengthen.eval import cli

    def _job(cfg, s) -> None:
        from selflengthen import ui

        report = write_report(s.run_dir)
        if not report["rounds"]:
            log.warning("%s has no finished round yet (check run.name / experiment=)", s.run_dir)
        ui.console.print(f"report: {s.run_dir / REPORT_DIR} (" + ", ".join(Path(p).name for p in report["plots"]) + ")")

    cli("report", _job)
