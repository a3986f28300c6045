"""How much of its training rows' length does the generator take on? `python bench/transfer.py`.

The evidence preset's question split in two. Extension yield (how many long rows a round produces) is
measured by the runs themselves (docs/evidence.md, "Ablations of the extension stage"); this bench measures
the other half: given the extended answers the method did produce, how far does SFT of the generator move
its answer length on held-out open prompts, under each training setting (epochs, learning rate, LoRA rank,
rows)? Each variant is the real trainer (`train=lora`, the evidence preset's settings plus the variant's
overrides) from the base model, then the real eval (`selflengthen.evidence.heldout.evaluate_round`, the preset's
1,536-token budget and decoding) on the open prompts of `eval_mixed_en.jsonl`, never trained on.

Rows: every extended answer that passed in the given run folders (`round_*/extend/passes.jsonl`, successful
attempts), the longest per instruction. Reported per variant: mean / median words on the open prompts,
pass rate, and the transfer = (mean after - base mean) / (row mean - base mean): 1 = the generator writes as
long as its rows, 0 = not moved.

Everything goes to --out (default iterations/bench_transfer/<variant>/: adapter, eval files); a rerun reuses
finished trainings and evals (the eval file is keyed by adapter, prompts, budget and decoding).

    python bench/transfer.py                                  # every variant below (~8 min each on one core)
    python bench/transfer.py --variants base paper x10 --open 8
    python bench/transfer.py --variants base preset lr1e-3 --eval-budget 3072   # does the budget hide the effect?
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SELFLENGTHEN_QUIET", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> train overrides on top of the evidence preset (train: lr 3e-4, 3 epochs, grad_accum 2, r 16)
VARIANTS: dict[str, list[str]] = {
    "base": [],  # no training: the base model
    "preset": [],  # the evidence preset's training as shipped
    "epochs10": ["train.epochs=10"],
    "lr1e-3": ["train.lr=1e-3"],
    "epochs10-lr1e-3": ["train.epochs=10", "train.lr=1e-3"],
    "r64": ["train.lora_r=64", "train.lora_alpha=128"],
    "rows3": [],  # the preset's training on 3 rows (what round 1 of run 1 had)
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "iterations" / "bench_transfer"))
    p.add_argument("--runs", nargs="+", default=[str(REPO / "iterations" / "evidence_run1"),
                                                 str(REPO / "iterations" / "evidence")],
                   help="run folders whose successful extensions are the training rows")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--open", type=int, default=16, help="open eval prompts (of eval_mixed_en.jsonl)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-budget", type=int, default=None,
                   help="eval answer budget in tokens (default: the preset's 1,536); does the budget hide the effect?")
    p.add_argument("--json", action="store_true", help="last line: one JSON object with every variant's numbers")
    return p.parse_args()


def extended_rows(runs: list[str]) -> list[dict]:
    """(instruction, extended answer) of every successful extension attempt, the longest per instruction."""
    from selflengthen.runfolder.store import read_jsonl

    best: dict[str, dict] = {}
    for run in runs:
        for passes in sorted(Path(run).glob("round_*/extend/passes.jsonl")):
            initial = {r["id"]: r for r in read_jsonl(passes.parent.parent / "initial" / "responses.jsonl")}
            for r in read_jsonl(passes):
                if not (r.get("final") and r["ok"]):
                    continue
                src = initial[r["item"].rsplit(".e", 1)[0]]
                row = {"id": r["item"], "instruction": src["instruction"], "text": r["text"], "words": r["words"],
                       "initial_words": src["words"]}
                if row["words"] > best.get(src["instruction"], {}).get("words", -1):
                    best[src["instruction"]] = row
    return sorted(best.values(), key=lambda r: r["id"])


def settings(out: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from selflengthen.settings import Settings

    with initialize_config_dir(config_dir=str(REPO / "selflengthen" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=evidence", "eval.limit=null", *overrides])
    return Settings.from_config(cfg, out)


def main() -> None:
    import torch

    from selflengthen.engines import session
    from selflengthen.evidence import heldout
    from selflengthen.stages.sft_data import generator_row
    from selflengthen.runfolder.store import atomic_write_json, read_json
    from selflengthen.training import trainer_for

    args = parse_args()
    torch.set_num_threads(args.threads)
    rows = extended_rows(args.runs)
    if not rows:
        sys.exit(f"no successful extension in {args.runs}: run the evidence preset first")
    row_mean = statistics.mean(r["words"] for r in rows)
    flags = "avx512_bf16" if torch.cpu.get_capabilities().get("avx512_bf16") else "no avx512_bf16"
    print(f"machine: {os.cpu_count()} CPU ({platform.machine()}, {flags}), torch {torch.__version__} threads "
          f"{args.threads}, load {os.getloadavg()[0]:.1f}")
    print(f"rows: {len(rows)} extended answers (mean {row_mean:.0f} words, from initial answers of mean "
          f"{statistics.mean(r['initial_words'] for r in rows):.0f}) from {', '.join(args.runs)}")
    out = Path(args.out)
    results: dict[str, dict] = {}
    for name in args.variants:
        folder = out / name
        budget = [f"eval.max_new_tokens={args.eval_budget}"] if args.eval_budget else []
        s = settings(folder, VARIANTS[name] + ["engine.threads=" + str(args.threads)] + budget)
        prompts = [p for p in heldout.load_prompts(heldout.prompt_path(s)) if heldout.is_open(p)][: args.open]
        use = rows[:3] if name == "rows3" else rows
        adapter = None
        t0 = time.time()
        if name != "base":
            adapter = folder / "train" / "adapter"
            key = {"rows": [r["id"] for r in use], "train": json.loads(json.dumps(s.train, default=lambda o: o.__dict__))}
            if not ((adapter / "adapter_config.json").exists() and (folder / "train_key.json").exists()
                    and read_json(folder / "train_key.json") == key):
                trainer = trainer_for(s.train_backend)
                metrics = trainer(session.model_resolver(s.model_path, s.model_cache)(),
                                  [generator_row(s.prompts, r) for r in use], folder / "train", None, s.train)
                atomic_write_json(folder / "train_metrics.json", metrics)
                atomic_write_json(folder / "train_key.json", key)
        train_s = time.time() - t0
        engine, _ = session.for_settings(s)
        try:
            doc = heldout.evaluate_round(s, engine, 1 if adapter else 0,
                                          {"generator": str(adapter) if adapter else None}, prompts)
        finally:
            engine.close()
        o = doc["open"]
        metrics = read_json(folder / "train_metrics.json") if adapter else {}
        transfer = (o["mean_words"] - results["base"]["mean_words"]) / (row_mean - results["base"]["mean_words"]) \
            if "base" in results and row_mean != results["base"]["mean_words"] else None
        results[name] = {"rows": len(use) if adapter else 0, "overrides": VARIANTS[name], "mean_words": o["mean_words"],
                         "median_words": o["median_words"], "max_words": o["max_words"],
                         "pass_rate": o["repetition_pass_rate"], "transfer": transfer,
                         "train_loss": metrics.get("loss"), "train_steps": metrics.get("steps"),
                         "train_s": round(train_s), "eval_s": round(doc["seconds"])}
        r = results[name]
        print(f"{name:16} rows {r['rows']:2}  open mean {r['mean_words']:.0f} median {r['median_words']:.0f} "
              f"longest {r['max_words']}  pass {r['pass_rate']:.0%}  transfer "
              f"{'-' if transfer is None else f'{transfer:+.2f}'}  loss {r['train_loss']}  steps {r['train_steps']}"
              f"  (train {r['train_s']} s, eval {r['eval_s']} s at {s.eval.max_new_tokens} tokens)", flush=True)
    name = f"result_{args.eval_budget}.json" if args.eval_budget else "result.json"
    atomic_write_json(out / name, {"rows": len(rows), "row_mean_words": row_mean, "eval_budget": s.eval.max_new_tokens,
                                   "variants": results})
    if args.json:
        print(json.dumps({"row_mean_words": row_mean, "variants": results}))


if __name__ == "__main__":
    main()
