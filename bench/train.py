"""LoRA training throughput and padding waste: `python bench/train.py [--rows 4] [--pad-rows 512]`.

Trains the embedded model (SmolLM2-135M-Instruct; a random Llama of the same shape when the converted
folder is not available) with `train_lora` for one epoch on a few synthetic rows whose answers span
32-384 tokens, and batches 512 such rows through the trainer's own sampler and collator (no forward pass)
to measure the padding share. One line per setting:
  dtype fp32 vs bf16 (`--dtypes N`: only those two, alternated N times), batching: batch 1 x grad-accum
  (the default, no padding), naive padded batches of 4, batches of 4 grouped by length, and TRL packing
  (padding-free).
tokens/s counts real (non-padding) prompt+answer tokens trained on, per wall-clock second of train().
(transformers' LengthGroupedSampler groups within mega-batches of up to 50 batches, so it needs a few
hundred rows to show its effect; a 8-row run would look like naive batching.)
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selflengthen.training.sft_lora import TrainConfig, train_lora  # noqa: E402

WORDS = ("The committee reviewed the budget, the schedule and the risks of the project before it voted. "
         "Each member explained the reasons for the choice and the costs it would bring. ").split()


def model_dir(tmp: Path) -> tuple[str, str]:
    """(folder, label): the embedded model if it resolves, else a random Llama with SmolLM2-135M's shape."""
    try:
        from selflengthen.engines.models import EMBEDDED, resolve_model_path

        return str(resolve_model_path(EMBEDDED)), "embedded SmolLM2-135M-Instruct"
    except Exception as exc:  # noqa: BLE001 - any failure falls back to the same-shape random model
        print(f"embedded model unavailable ({exc.__class__.__name__}: {exc}); using a random Llama of its shape")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_model
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = build_tiny_model(tmp / "shape")
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return str(folder), "random Llama, SmolLM2-135M shape"


def make_rows(n: int, tokenizer) -> list[dict]:
    """n rows, answers evenly spread from 32 to 384 tokens, in shuffled order (as a real data set comes)."""
    import random

    ids = tokenizer(" ".join(WORDS * 40))["input_ids"]
    rows = []
    for i in range(n):
        target = 32 + (384 - 32) * i // max(1, n - 1)
        rows.append({"messages": [{"role": "user", "content": f"Write a detailed report, part {i}."},
                                  {"role": "assistant", "content": tokenizer.decode(ids[:target]).strip()}]})
    random.Random(0).shuffle(rows)
    return rows


def padding_share(folder: str, rows: list[dict], cfg: TrainConfig, tmp: Path) -> float:
    """Padding share of one epoch through the trainer's real sampler and collator (no forward pass)."""
    from selflengthen.training.sft_lora import build_trainer

    trainer, _ = build_trainer(folder, rows, tmp / "pad", None, cfg)
    real = total = 0
    for batch in trainer.get_train_dataloader():
        total += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    return 1 - real / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4, help="rows trained on per setting (throughput)")
    ap.add_argument("--pad-rows", type=int, default=512, help="rows batched per setting (padding share)")
    ap.add_argument("--dtypes", type=int, default=0, metavar="N",
                    help="only the default batching in bf16 and fp32, alternated N times (the first pair pays "
                         "the warm-up; compare the later ones)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from transformers import AutoTokenizer

    batchings = {  # label -> TrainConfig overrides; one epoch each
        "batch 1 x accum 4 (default)": dict(batch_size=1, grad_accum=4),
        "naive padded batches of 4": dict(batch_size=4, grad_accum=1, group_by_length=False),
        "batches of 4 grouped by length": dict(batch_size=4, grad_accum=1, group_by_length=True),
        "packing (padding-free)": dict(batch_size=1, grad_accum=1, packing=True, max_length=1024),
    }
    settings = [("fp32", label, over) for label, over in batchings.items()]
    settings.insert(1, ("bf16", "batch 1 x accum 4 (default)", dict(batch_size=1, grad_accum=4, dtype="bf16")))
    if args.dtypes:
        settings = [(d, f"batch 1 x accum 4 (default), pass {k + 1}", dict(batch_size=1, grad_accum=4, dtype=d))
                    for k in range(args.dtypes) for d in ("bf16", "fp32")]
    with tempfile.TemporaryDirectory() as tmp:
        folder, label = model_dir(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        rows, many = make_rows(args.rows, tokenizer), make_rows(args.pad_rows, tokenizer)
        results = []
        for i, (dtype, batching, over) in enumerate(settings):
            cfg = TrainConfig(**{"epochs": 1, "warmup_ratio": 0.0, "save_steps": 10_000, **over})
            m = train_lora(folder, rows, Path(tmp) / f"run{i}", None, cfg)
            pad = padding_share(folder, many, cfg, Path(tmp))
            results.append((dtype, batching, m, pad))
            print(f"done: {dtype} {batching}: {m['tokens_per_s']:.0f} tok/s, padding {100 * pad:.1f}%", flush=True)

    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    import torch

    print(f"\nmodel: {label}; LoRA r=16 all-linear; answers 32-384 tokens")
    caps = torch.cpu.get_capabilities()
    native = "avx512_bf16" if caps.get("avx512_bf16") else "amx_bf16" if caps.get("amx_bf16") else "none (AVX2)"
    print(f"machine: {cpu.split(':', 1)[-1].strip()}, nproc {os.cpu_count()}, torch threads "
          f"{torch.get_num_threads()}, native bf16: {native}, python {platform.python_version()}, "
          f"torch {torch.__version__}")
    print(f"tokens/s: one epoch over {args.rows} rows; padding share: one epoch over {args.pad_rows} rows\n")
    print("| dtype | batching | steps | tokens | tokens/s | padding share |")
    print("|---|---|---:|---:|---:|---:|")
    for dtype, batching, m, pad in results:
        print(f"| {dtype} | {batching} | {m['steps']} | {m['tokens']} | {m['tokens_per_s']:.0f} | {100 * pad:.1f}% |")


if __name__ == "__main__":
    main()
