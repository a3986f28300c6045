"""Long answers on the transformers engine: the slot loop (continuous batching) against `model.generate`.

    python bench/stream_engine.py                 # 16 seed instructions, 1,536-token budget (~10 minutes on 2 cores)
    python bench/stream_engine.py --quick         # 8 instructions, 256 tokens
    python bench/stream_engine.py --json          # last line: one JSON object with the rates
    python bench/stream_engine.py --prompts 20 --forced 0 --static-full   # the issue's eval workload, both loops to the end

Two workloads on the same prompts, one after the other in one process:
- natural: the paper's sampling (temperature 0.7, top-p 0.8, top-k 20, repetition penalty 1.1, a seed per
  request), answers stop at eos or the budget;
- forced: every answer exactly `--forced` tokens (greedy, eos suppressed), so step costs compare like with like.
The slot loop (engine.loop=slots, the default) runs each workload to the end. `model.generate` (engine.loop=
static, what the engine did before) is given at most the slot loop's wall time, capped at `--static-seconds`
per batch (transformers' max_time): its rate over its first seconds is an upper bound of its whole-run rate,
because later steps attend over more context and carry rows that already finished. "useful tokens" are
answer tokens up to eos. The bounds: the machine's bf16 matmul rate over 2 x parameters FLOP per token, and
its memory copy rate over the bytes one step reads (weights once, plus every row's keys/values at the mean
context), per token. The CPU is shared: compare the ratio, measured back to back, not absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.generation import instructions, matmul_gflops  # noqa: E402
from selflengthen.engines.base import Request, SamplingParams  # noqa: E402
from selflengthen.engines.transformers_engine import TransformersEngine, cpu_has_fast_bf16  # noqa: E402
from selflengthen.engines.models import EMBEDDED, resolve_model_path  # noqa: E402

PAPER = dict(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.1)


def copy_gbps(mib: int = 256, budget_s: float = 1.0) -> float:
    """Memory bandwidth as one large copy reads and writes it (bytes read + written per second)."""
    import torch

    a = torch.empty(mib << 20, dtype=torch.uint8)
    b = torch.empty_like(a)
    b.copy_(a)
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < budget_s:
        b.copy_(a)
        done += 1
    return 2 * a.numel() * done / (time.perf_counter() - start) / 1e9


def requests(prompts: list[str], budget: int, natural: bool) -> list[Request]:
    params = [SamplingParams(max_new_tokens=budget, seed=i, **PAPER) if natural
              else SamplingParams(temperature=0.0, max_new_tokens=budget) for i in range(len(prompts))]
    return [Request.chat(f"q{i}", [("user", p)], params[i]) for i, p in enumerate(prompts)]


def measure(engine: TransformersEngine, reqs: list[Request], overrides: dict) -> dict:
    engine.generate_overrides = dict(overrides)
    before = (engine.stats.new_tokens, engine.stats.prompt_tokens)
    extra_before = dict(engine.stats.extra)
    start = time.perf_counter()
    texts = engine.generate(reqs)
    seconds = time.perf_counter() - start
    new = engine.stats.new_tokens - before[0]
    steps = engine.stats.extra.get("decode_steps", 0) - extra_before.get("decode_steps", 0)
    rows = engine.stats.extra.get("decode_rows", 0) - extra_before.get("decode_rows", 0)
    return {"tokens": new, "seconds": seconds, "tok_s": new / seconds, "words": sum(len(t.split()) for t in texts),
            "prompt_tokens": engine.stats.prompt_tokens - before[1], "steps": steps,
            "mean_rows": rows / steps if steps else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 prompts, 256-token budget, 128 forced")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--budget", type=int, default=1536, help="max_new_tokens of the natural workload")
    ap.add_argument("--forced", type=int, default=768, help="answer length of the forced workload (0: skip)")
    ap.add_argument("--batch", type=int, default=32, help="slot loop's batch_size (the engine's default)")
    ap.add_argument("--static-batch", type=int, default=16,
                    help="model.generate's batch (16: what the engine used before the slot loop)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    ap.add_argument("--static-seconds", type=float, default=150.0, help="cap on model.generate's time per batch")
    ap.add_argument("--static-full", action="store_true",
                    help="let model.generate run every batch to its end (no time cap): its whole-run rate")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.budget, args.forced, args.static_seconds = 8, 256, 128, 60.0

    import torch

    engine = TransformersEngine(resolve_model_path(EMBEDDED), batch_size=args.batch, threads=args.threads)
    engine.load()
    cfg = engine.model.config
    n_params = sum(p.numel() for p in engine.model.parameters())
    dtype = engine.stats.extra["dtype"]
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout
    print(f"machine: {cpu.split(':', 1)[-1].strip()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, native bf16: "
          f"{cpu_has_fast_bf16()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    gflops, gbps = matmul_gflops(getattr(torch, dtype)), copy_gbps()
    print(f"model: embedded, {n_params / 1e6:.0f}M parameters, {dtype}; matmul {gflops:.0f} GFLOP/s, copy {gbps:.1f} GB/s")
    prompts = instructions(args.prompts)
    engine.generate(requests(prompts[:2], 4, natural=True))  # warm-up

    kv_bytes_per_col = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) \
        * torch.finfo(getattr(torch, dtype)).bits // 8
    weight_bytes = n_params * torch.finfo(getattr(torch, dtype)).bits // 8
    results = {}
    workloads = [("natural", args.budget, {}, True)]
    if args.forced:
        workloads.append(("forced", args.forced, {"min_new_tokens": args.forced}, False))
    header = f"{'workload':8} {'loop':6} {'answers':>7} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'ratio':>6} " \
             f"{'mean rows':>9} {'matmul bound':>12} {'memory bound':>12}"
    for name, budget, overrides, natural in workloads:
        reqs = requests(prompts, budget, natural)
        engine.loop = "slots"
        fast = measure(engine, reqs, overrides)
        engine.loop, engine.batch_size = "static", args.static_batch
        cap = min(args.static_seconds, fast["seconds"] / -(-len(reqs) // args.static_batch))
        slow = measure(engine, reqs, overrides if args.static_full else {**overrides, "max_time": cap})
        engine.loop, engine.batch_size = "slots", args.batch
        # Bounds at this workload's mean context (prompt + half the mean answer), full batches.
        ctx = fast["prompt_tokens"] / len(reqs) + fast["tokens"] / len(reqs) / 2
        mm_bound = gflops * 1e9 / (2 * n_params)
        mem_bound = gbps * 1e9 / (weight_bytes / args.batch + kv_bytes_per_col * ctx)
        results[name] = {"slots": fast, "static": slow, "ratio": fast["tok_s"] / slow["tok_s"],
                         "matmul_bound": mm_bound, "memory_bound": mem_bound, "mean_context": ctx}
        print(header if name == "natural" else "", flush=True)
        for loop, r in (("slots", fast), ("static", slow)):
            ratio = f"{fast['tok_s'] / slow['tok_s']:.1f}x" if loop == "slots" else ""
            rows = f"{r['mean_rows']:.1f}" if r["mean_rows"] else "-"
            print(f"{name:8} {loop:6} {len(reqs):>7} {r['tokens']:>7} {r['seconds']:>8.1f} {r['tok_s']:>7.1f} "
                  f"{ratio:>6} {rows:>9} {mm_bound:>12.0f} {mem_bound:>12.0f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
