"""Generation throughput, vLLM vs transformers, on the embedded model: batch sizes 1-32, with and without LoRA.

    python bench/engines.py                       # bf16, batches 1 8 16 32, 16 new tokens each
    python bench/engines.py --dtype float32 --new-tokens 32 --batch-sizes 1 16

Both engines get the same chat prompts (seed instructions), greedy, and every answer is forced to exactly
`--new-tokens` tokens (vLLM: ignore_eos; transformers: min_new_tokens), so rates compare like with like.
"with LoRA" runs every request on one random rank-16 adapter on all linear projections. A batch of B means
one `generate` call with B requests: vLLM schedules them itself, transformers gets batch_size=B. vLLM runs
with enforce_eager=True (no torch.compile: its compile step takes minutes on 2 cores) and a 1 GiB KV cache.
Rates are aggregate new tokens per second of the generate call (start-up excluded; one warm-up call first).

The bound: decoding one token costs about 2 x parameters FLOP (weights only; attention over a short KV cache
is ignored), so no engine beats (measured dense matmul rate in this dtype, 1024^3, x @ W^T) / (2 x parameters)
tokens/s;
"share" is how much of that a row reaches. The CPU may be shared with other work: quote numbers together
with the machine line this script prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from selflengthen.engines.base import Request, SamplingParams  # noqa: E402
from selflengthen.engines.models import EMBEDDED, resolve_model_path  # noqa: E402

SEEDS = Path(__file__).resolve().parent.parent / "selflengthen" / "data" / "seeds_en.jsonl"


def matmul_gflops(dtype_name: str, n: int = 1024, budget_s: float = 3.0) -> float:
    """Dense matmul rate in this dtype, in the layout a decoder's linear layers use (x @ W^T, as F.linear).
    The layout matters here: a plain bf16 `a @ b` ran ~10x slower on this CPU than `x @ W^T`."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    x, w = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    F.linear(x, w)  # warm-up
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < budget_s:
        F.linear(x, w)
        done += 1
    return 2 * n ** 3 * done / (time.perf_counter() - start) / 1e9


def parameter_count(model_path: str) -> int:
    """Every tensor in the checkpoint (a tied embedding counts once: it is the output matmul too)."""
    from safetensors import safe_open

    total = 0
    for f in Path(model_path).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                count = 1
                for d in st.get_slice(name).get_shape():
                    count *= int(d)
                total += count
    return total


def make_adapter(model_path: str, folder: Path) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    cfg = LoraConfig(r=16, lora_alpha=16, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(model, cfg).save_pretrained(folder)
    return str(folder)


def requests(count: int, new_tokens: int, adapter) -> list[Request]:
    rows = [json.loads(line)["prompt"] for line in SEEDS.read_text().splitlines() if line.strip()]
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=new_tokens)
    return [Request.chat(f"q{i}", [("user", rows[i % len(rows)])], params, adapter=adapter) for i in range(count)]


def measure(engine, batch: int, new_tokens: int, adapter) -> float:
    tokens, start = engine.stats.new_tokens, time.perf_counter()
    engine.generate(requests(batch, new_tokens, adapter))
    made = engine.stats.new_tokens - tokens
    assert made == batch * new_tokens, f"expected {batch * new_tokens} new tokens, got {made}"
    return made / (time.perf_counter() - start)


def bench_vllm(model_path, adapter, args) -> dict:
    from selflengthen.engines.vllm_engine import VllmEngine

    eng = VllmEngine(model_path, dtype=args.dtype, cpu_kvcache_space_gib=1, max_model_len=2048,
                     enforce_eager=True, max_lora_rank=16, max_loras=2)
    start = time.perf_counter()
    eng.load()
    eng.ignore_eos = True
    eng.set_adapters({"generator": adapter, "extender": None})
    print(f"vllm: started in {time.perf_counter() - start:.0f} s", flush=True)
    return _sweep("vllm", eng, lambda b: None, args)


def bench_transformers(model_path, adapter, args) -> dict:
    from selflengthen.engines.transformers_engine import TransformersEngine

    eng = TransformersEngine(model_path, dtype=args.dtype, batch_size=max(args.batch_sizes))
    eng.load()
    eng.generate_overrides = {"min_new_tokens": args.new_tokens}
    eng.set_adapters({"generator": adapter, "extender": None})

    def set_batch(b):
        eng.batch_size = b
    return _sweep("transformers", eng, set_batch, args)


def _sweep(name, eng, set_batch, args) -> dict:
    rates = {}
    try:
        set_batch(2)
        for adapter in (None, "generator"):
            eng.generate(requests(2, 4, adapter))  # warm-up: first-call costs stay out of the rates
        for adapter in (None, "generator"):
            for b in args.batch_sizes:
                set_batch(b)
                rates[(b, adapter)] = measure(eng, b, args.new_tokens, adapter)
                print(f"{name:12s} batch {b:2d} {'LoRA' if adapter else 'base'}: {rates[(b, adapter)]:7.1f} tok/s",
                      flush=True)
    finally:
        eng.close()
    return rates


def machine_line() -> str:
    try:
        model = next(l.split(":", 1)[1].strip() for l in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    import torch

    return f"{model}, nproc={os.cpu_count()}, torch {torch.__version__}, threads={torch.get_num_threads()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--engines", nargs="+", default=["vllm", "transformers"], choices=["vllm", "transformers"])
    args = ap.parse_args()

    model_path = resolve_model_path(EMBEDDED)
    params = parameter_count(model_path)
    gflops = matmul_gflops(args.dtype)
    bound = gflops * 1e9 / (2 * params)
    print(f"machine: {machine_line()}")
    print(f"model: {EMBEDDED} ({params / 1e6:.1f} M parameters), dtype {args.dtype}, {args.new_tokens} new tokens "
          f"per request, greedy")
    print(f"bound: {args.dtype} matmul {gflops:.1f} GFLOP/s / (2 x {params / 1e6:.1f} M FLOP/token) = "
          f"{bound:.1f} tok/s", flush=True)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(model_path, Path(tmp) / "lora")
        for name in args.engines:
            results[name] = (bench_vllm if name == "vllm" else bench_transformers)(model_path, adapter, args)

    print()
    print(f"| batch | adapter | " + " | ".join(f"{n} tok/s" for n in args.engines) + " | "
          + " | ".join(f"{n} share" for n in args.engines) + " | bound tok/s |")
    print("|---" * (3 + 2 * len(args.engines)) + "|")
    for adapter in (None, "generator"):
        for b in args.batch_sizes:
            rates = [results[n][(b, adapter)] for n in args.engines]
            print(f"| {b} | {'LoRA r16' if adapter else 'none'} | " + " | ".join(f"{r:.1f}" for r in rates) + " | "
                  + " | ".join(f"{100 * r / bound:.0f}%" for r in rates) + f" | {bound:.0f} |")


if __name__ == "__main__":
    main()
