"""AgentWrite (plan + write step by step) against two-stage extension (initial + extend), side by side.

Both run through the real stage code (stages/plan.py + write.py; stages/initial.py + extend.py) with the
transformers engine on the same model, the same instructions and the same generation budget: every call
has the same token cap (--max-new-tokens), and an answer's successful path costs the same number of calls
— AgentWrite 1 plan + --steps steps, extension 1 initial + 2 calls per pass x --passes — with the same
re-draw allowances (--attempts for a plan / an initial answer, 2 for a step / an extension attempt).
Length-aware sampling is off (sampling.a=0), so "kept" means "passed the quality filter". AgentWrite runs
twice: as the original (a plan must follow the format exactly) and as `agentwrite+`, with the plan's first
header prefilled and a default word count for step lines that omit it (plan.prefill, plan.default_words).

Reported per method: answers kept / answers tried (the filter pass rate of the final answers), mean words
of the kept answers, generations and new tokens spent per kept answer, and wall time.

    python bench/agentwrite_vs_extend.py                           # 8 instructions on the embedded model
    python bench/agentwrite_vs_extend.py --instructions 2 --max-new-tokens 64   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def settings(run_dir: Path, method: str, args, lenient: bool = False) -> object:
    from hydra import compose, initialize_config_dir

    from selflengthen.settings import Settings

    n, steps, passes = args.max_new_tokens, args.steps, args.passes
    overrides = [f"method={method}", "engine=transformers", f"engine.threads={args.threads}",
                 f"model.path={args.model}", f"seed={args.seed}",
                 "iterations=1", "sampling.a=0.0", "run.checkpoint_every=8"]
    if method == "agentwrite":  # plans of at most `steps` paragraphs whose words fit one call's budget
        if lenient:  # the plan's first header prefilled, a step without a count gets 60% of the step budget
            overrides += ["plan.prefill=true", f"plan.default_words={max(20, int(0.6 * n / 1.5))}"]
        overrides += [f"plan.max_steps={steps}", f"plan.max_attempts={args.attempts}", "plan.min_words=20",
                      f"plan.max_words={max(20, int(n / 1.5))}", f"plan.max_new_tokens={n}", "write.max_attempts=2",
                      "write.tokens_per_word=1.5", f"write.max_new_tokens={n}"]
    else:  # an initial answer, then `passes` passes of stage 1 + stage 2
        overrides += ["generate.samples=1", f"generate.max_attempts={args.attempts}", f"generate.max_new_tokens={n}",
                      "extend.samples=1", f"extend.passes={passes}",
                      "extend.max_attempts=2", f"extend.max_new_tokens={n}"]
    with initialize_config_dir(config_dir=str(ROOT / "selflengthen" / "conf"), version_base="1.3"):
        return Settings.from_config(compose("config", overrides=overrides), run_dir)


def run_method(name: str, root: Path, instructions: list[str], engine, args) -> dict:
    from selflengthen.stages import extend, initial, plan, write
    from selflengthen.stages.common import RoundContext
    from selflengthen.runfolder.store import atomic_write_jsonl, read_jsonl

    method = "selflengthen" if name == "extension" else "agentwrite"
    s = settings(root / name, method, args, lenient=name == "agentwrite+")
    roles = s.method.roles
    ctx = RoundContext(s, 1, engine, {role: None for role in roles}, method=s.method)
    engine.set_adapters(ctx.adapters)
    atomic_write_jsonl(ctx.stage_dir("self_instruct") / "instructions.jsonl",
                       [{"id": f"i{k:04d}", "prompt": p} for k, p in enumerate(instructions)])
    before = _tokens(engine)
    start = time.time()
    if name != "extension":
        p, w = plan.run(ctx), write.run(ctx)
        generations, kept_file = p["plans_drawn"] + w["step_generations"], ctx.stage_dir("write") / "answers.jsonl"
        rejections = {**p["rejections"], **w["rejections"]}
    else:
        g, e = initial.run(ctx), extend.run(ctx)
        generations, kept_file = g["samples_drawn"] + e["requests"], ctx.stage_dir("extend") / "extended.jsonl"
        rejections = {**g["rejections"], **{f"extend_{k}": v for k, v in e["rejections"].items()}}
    kept = read_jsonl(kept_file)
    n = len(kept)
    return {"method": name, "tried": len(instructions), "kept": n, "pass_rate": n / len(instructions),
            "mean_words": sum(r["words"] for r in kept) / n if n else 0.0,
            "generations": generations, "generations_per_kept": generations / n if n else None,
            "new_tokens": _tokens(engine) - before,
            "tokens_per_kept": (_tokens(engine) - before) / n if n else None,
            "seconds": time.time() - start, "rejections": rejections}


def _tokens(engine) -> int:
    inner = getattr(engine, "inner", None)
    return inner.stats.new_tokens if inner is not None else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2-135m")
    ap.add_argument("--instructions", type=int, default=8, help="seed instructions (the shipped en seeds, first N)")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="token cap of every call, both methods")
    ap.add_argument("--steps", type=int, default=4, help="AgentWrite: most paragraphs per plan")
    ap.add_argument("--passes", type=int, default=2, help="extension passes (2 calls each)")
    ap.add_argument("--attempts", type=int, default=3, help="draws of a plan / an initial answer")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 1 on a shared CPU (see engine.threads)")
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temp folder)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    os.environ.setdefault("SELFLENGTHEN_QUIET", "1")

    from selflengthen.engines import session
    from selflengthen.settings import load_seed_file, shipped_data

    instructions = list(load_seed_file(shipped_data("seeds_en.jsonl")))[: args.instructions]
    root = Path(args.out or tempfile.mkdtemp(prefix="aw_vs_ext_"))
    first = settings(root / "probe", "agentwrite", args)
    engine, _ = session.for_settings(first)  # one engine (one model load) serves both methods
    try:
        results = [run_method(name, root, instructions, engine, args) for name in ("agentwrite", "agentwrite+", "extension")]
    finally:
        engine.close()

    print(f"\n{args.instructions} instructions, model {args.model}, every call <= {args.max_new_tokens} new tokens; "
          f"AgentWrite 1 plan + <= {args.steps} steps, extension 1 initial + {args.passes} passes x 2 calls")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s), "
          f"python {platform.python_version()}\n")
    head = f"{'method':<11} {'kept/tried':>10} {'pass rate':>9} {'mean words':>10} {'gens/kept':>9} {'tokens/kept':>11} {'seconds':>8}"
    print(head)
    print("-" * len(head))
    for r in results:
        gk = "–" if r["generations_per_kept"] is None else f"{r['generations_per_kept']:.1f}"
        tk = "–" if r["tokens_per_kept"] is None else f"{r['tokens_per_kept']:.0f}"
        print(f"{r['method']:<11} {r['kept']:>4}/{r['tried']:<5} {r['pass_rate']:>9.0%} {r['mean_words']:>10.0f} "
              f"{gk:>9} {tk:>11} {r['seconds']:>8.0f}")
    for r in results:
        print(f"{r['method']} rejections: {r['rejections']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nrun folders: {root}")


if __name__ == "__main__":
    main()
