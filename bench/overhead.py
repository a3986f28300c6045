"""Orchestration overhead of a finished run: the share of each round's wall time spent outside engine
generate() calls and optimizer steps — data I/O, filtering, sampling and every model load.

Target (issue: performance): <= 2% of the round on the smoke run. The split is recorded by the recipe in
`round_NNN/summary.json["seconds"]` (generate, train_steps, engine_load, overhead). Model loads (the
engine's, and the trainer's base model + adapter per role) count as overhead here, so this is the strict
reading of the target.

    python bench/peak_rss.py                    # makes iterations/bench-smoke (and reports peak RSS)
    python bench/overhead.py --run-name bench-smoke
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-name", default="bench-smoke")
    ap.add_argument("--root", default=str(REPO / "iterations"))
    args = ap.parse_args()
    rounds = sorted(Path(args.root, args.run_name).glob("round_*/summary.json"))
    if not rounds:
        raise SystemExit(f"no finished round under {Path(args.root, args.run_name)}: run bench/peak_rss.py first")
    print("| round | wall s | generate s | train steps s | model loads s (engine) | overhead s | share | target |")
    print("|---|---|---|---|---|---|---|---|")
    tot = {"round": 0.0, "generate": 0.0, "train_steps": 0.0, "overhead": 0.0}
    for path in rounds:
        s = json.loads(path.read_text())["seconds"]
        if "overhead" not in s:
            raise SystemExit(f"{path} has no time split (made by an older version): rerun the smoke")
        for k in tot:
            tot[k] += s[k]
        print(f"| {path.parent.name} | {s['round']:.1f} | {s['generate']:.1f} | {s['train_steps']:.1f} | "
              f"{s['engine_load']:.1f} | {s['overhead']:.1f} | {100 * s['overhead_share']:.1f}% | <= 2% |")
    share = tot["overhead"] / tot["round"]
    print(f"| all | {tot['round']:.1f} | {tot['generate']:.1f} | {tot['train_steps']:.1f} | | {tot['overhead']:.1f} | "
          f"{100 * share:.1f}% | <= 2% {'met' if share <= 0.02 else 'NOT met'} |")


if __name__ == "__main__":
    main()
