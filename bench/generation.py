"""Generation throughput of the transformers engine on the embedded model: batch 1 vs big batches, fp32 vs bf16.

    python bench/generation.py            # 32 seed instructions, 128 new tokens each (several minutes on 2 cores)
    python bench/generation.py --quick    # 8 instructions, 32 new tokens

Every answer is forced to exactly `max_new_tokens` tokens (greedy, min_new_tokens = max_new_tokens), so the
rates compare like with like. The compute bound is the matmul rate measured here over 2 x parameters FLOP per
generated token (weights only; attention over the short KV cache is ignored), so "share" says how much of the
machine's dense-matmul speed decoding actually reaches. The CPU may be shared: rerun on a quiet machine before
quoting numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from selflengthen.engines.base import Request, SamplingParams  # noqa: E402
from selflengthen.engines.transformers_engine import TransformersEngine, cpu_has_fast_bf16  # noqa: E402
from selflengthen.engines.models import EMBEDDED, resolve_model_path  # noqa: E402

SEEDS = Path(__file__).resolve().parent.parent / "selflengthen" / "data" / "seeds_en.jsonl"


def matmul_gflops(dtype, n: int = 1024, budget_s: float = 2.0) -> float:
    """Dense square matmul rate; at least one multiply, more until `budget_s` has passed."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < budget_s:
        a @ b
        done += 1
    return 2 * n ** 3 * done / (time.perf_counter() - start) / 1e9


def instructions(count: int) -> list[str]:
    rows = [json.loads(line)["prompt"] for line in SEEDS.read_text().splitlines() if line.strip()]
    return [rows[i % len(rows)] for i in range(count)]


def run(engine: TransformersEngine, prompts: list[str], new_tokens: int) -> tuple[int, float]:
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
    reqs = [Request.chat(f"q{i}", [("user", p)], params) for i, p in enumerate(prompts)]
    engine.generate_overrides = {"min_new_tokens": new_tokens}  # every answer exactly new_tokens long
    tokens, seconds = engine.stats.new_tokens, engine.stats.seconds
    engine.generate(reqs)
    return engine.stats.new_tokens - tokens, engine.stats.seconds - seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 prompts x 32 tokens instead of 32 x 128")
    ap.add_argument("--batches", default="16,32", help="batch sizes to compare with batch 1")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per batched row (default 32; quick 8)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens per answer (default 128; quick 32)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    n_prompts, new_tokens, n_single = (8, 32, 2) if args.quick else (32, 128, 4)
    n_prompts, new_tokens = args.prompts or n_prompts, args.new_tokens or new_tokens
    batches = [int(b) for b in args.batches.split(",")]
    model_path = resolve_model_path(EMBEDDED)
    fast_bf16 = cpu_has_fast_bf16() or torch.cuda.is_available()

    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"machine: {cpu.split(':', 1)[-1].strip() or platform.processor()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, "
          f"native bf16: {fast_bf16}")
    rates = {}
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        # Emulated bf16 is ~100x slower: a small matrix and one multiply are enough to show it.
        slow = name != "float32" and not fast_bf16
        rates[name] = matmul_gflops(dtype, n=512 if slow else 1024, budget_s=0.5 if slow else 2.0)
        print(f"matmul {name}: {rates[name]:.1f} GFLOP/s")

    header = f"{'dtype':9} {'batch':>5} {'prompts':>7} {'new tok':>8} {'seconds':>8} {'tok/s':>7} " \
             f"{'vs b1':>6} {'bound tok/s':>11} {'share':>6}"
    print(header)
    print("-" * len(header))
    for name in args.dtypes.split(","):
        slow = name != "float32" and not fast_bf16
        # Without native bf16 a full run would take most of an hour; a few tokens show the rate.
        tokens = min(new_tokens, 8) if slow else new_tokens
        engine = TransformersEngine(model_path, dtype=name, batch_size=1)
        engine.load()
        params = sum(p.numel() for p in engine.model.parameters())
        bound = rates[name] * 1e9 / (2 * params)
        prompts = instructions(n_prompts)
        run(engine, prompts[:1], 2 if slow else 8)  # warm-up
        base_rate = None
        # Emulated bf16: one prompt at batch 1 already takes seconds per token, so that is all it runs.
        for batch in [1] if slow else [1] + batches:
            engine.batch_size = batch
            use = prompts[:1] if slow else prompts[:n_single] if batch == 1 else prompts[:max(batch, n_prompts)]
            got, secs = run(engine, use, tokens)
            rate = got / secs
            base_rate = base_rate or rate
            print(f"{name:9} {batch:>5} {len(use):>7} {got:>8} {secs:>8.1f} {rate:>7.1f} "
                  f"{rate / base_rate:>5.1f}x {bound:>11.0f} {rate / bound:>6.1%}", flush=True)
        engine.close()


if __name__ == "__main__":
    main()
