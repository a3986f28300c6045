"""A GRPO step with and without transformers' continuous batching for the rollouts: `python bench/grpo_rollout.py`.

`train.continuous_batching` (TRL's `use_transformers_continuous_batching`) decodes a group's answers with
transformers' continuous-batching engine (paged KV cache, no padding to the longest answer) instead of one
padded `generate` call. This bench trains the same GRPO steps (training/grpo_lora.py, the project's rewards) on
the embedded model (SmolLM2-135M-Instruct) both ways, same seed, same prompts, and reports per step: the
rollout time (TRL's own `transformers.generate` / `transformers.generate_batch` profiling), the whole step's
time, the mean completion length, and completion tokens per second of rollout.

  python bench/grpo_rollout.py                          # defaults: 3 steps x group 8, 128 tokens (~3-5 min here)
  python bench/grpo_rollout.py --model <tiny dir> --steps 1 --group 4 --max-tokens 16   # smoke (the test)
  python bench/grpo_rollout.py --json                   # last line: one JSON object
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = ["Write a short story about a lighthouse keeper, in about 60 words.",
           "Explain how a steam engine works, in about 80 words.",
           "Describe a busy market in the morning, in about 50 words.",
           "Give advice to a new gardener, in about 70 words."]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded:smollm2-135m", help="model path or embedded:<name>")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--group", type=int, default=8, help="num_generations (answers per prompt)")
    p.add_argument("--max-tokens", type=int, default=128, help="max_completion_length")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p.parse_args(argv)


def one(model_path: str, continuous: bool, args, out: Path) -> dict:
    """`args.steps` GRPO steps; rollout and step seconds per step from TRL's logs."""
    from selflengthen.training.grpo_lora import GrpoConfig, build_trainer, to_examples

    rows = [{"id": f"p{i}", "prompt": p, "lo": 40, "hi": 90} for i, p in enumerate(PROMPTS)]
    cfg = GrpoConfig(lr=1e-4, max_steps=args.steps, num_generations=args.group, prompts_per_step=1,
                     batch_size=args.group, max_completion_length=args.max_tokens, l_max_words=200, dtype="fp32",
                     save_steps=1000, continuous_batching=continuous, seed=0)
    cfg.check()
    kept: list[dict] = []
    from transformers import TrainerCallback

    class Keep(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            kept.append(dict(logs or {}))

    from unittest import mock

    from trl.extras.profiling import ProfilingContext

    timed: list[tuple[str, float]] = []  # TRL's own profiled blocks (name, seconds)
    trainer = build_trainer(model_path, to_examples(rows, cfg), out / "ckpt", None, cfg, callbacks=[Keep()])
    start = time.perf_counter()
    with mock.patch.object(ProfilingContext, "_log_metrics", lambda self, d: timed.append((self.name, d))):
        trainer.train()
    seconds = time.perf_counter() - start
    steps = [row for row in kept if "completions/mean_length" in row]
    lengths = [row["completions/mean_length"] for row in steps]
    tokens = sum(length * args.group for length in lengths)
    key = "transformers.generate_batch" if continuous else "transformers.generate"
    rollout = sum(d for name, d in timed if name.endswith(key))
    return {"continuous_batching": continuous, "steps": len(steps), "seconds": round(seconds, 2),
            "step_s": round(seconds / max(1, len(steps)), 2), "rollout_s": round(rollout, 2) if rollout else None,
            "mean_completion_tokens": round(sum(lengths) / max(1, len(lengths)), 1),
            "rollout_tokens_per_s": round(tokens / rollout, 1) if rollout else None}


def machine() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    except OSError:
        model = platform.processor() or "?"
    import torch

    return f"{os.cpu_count()} CPU ({model}), torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from selflengthen.engines.models import resolve_model_path

    torch.set_num_threads(args.threads)
    model_path = resolve_model_path(args.model, None) if args.model.startswith("embedded:") else args.model
    print(f"machine: {machine()}")
    print(f"model {args.model}; {args.steps} GRPO steps of one prompt x {args.group} answers, "
          f"max_completion_length {args.max_tokens}, fp32")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-grpo-rollout-") as tmp:
        for continuous in (False, True):
            r = one(model_path, continuous, args, Path(tmp) / str(continuous))
            results.append(r)
    print("\n| rollouts | steps | s per step | rollout s (all steps) | mean completion tokens | rollout tokens/s |")
    print("|----------|-------|------------|-----------------------|------------------------|------------------|")
    for r in results:
        name = "continuous batching" if r["continuous_batching"] else "padded generate"
        print(f"| {name} | {r['steps']} | {r['step_s']} | {r['rollout_s']} | {r['mean_completion_tokens']} | "
              f"{r['rollout_tokens_per_s']} |")
    out = {"padded": results[0], "continuous": results[1]}
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
