"""Does a short GRPO run raise the length reward on held-out prompts? `python bench/grpo_length.py`.

LongWriter-Zero in miniature on the CPU: the embedded model (SmolLM2-135M-Instruct) is GRPO-trained with
LoRA (`training/grpo_lora.py`, rewards from `selflengthen/methods/lwzero_rewards.py`) on the seed instructions
(`selflengthen/data/seeds_en.jsonl`) with length constraints phrased in as the collection step does
(a random kind, a target of --train-words-min..max words). Before and after, it answers the held-out
constrained prompts of `selflengthen/data/eval_en.jsonl` (never trained on: the script checks that no
prompt is shared) whose range ends at or below --eval-max-hi words (the regime the training targets cover:
the base model overshoots them), --samples answers each with the same seeds, and reports the
mean length reward (1 inside [lo, hi], len/lo below, falling to 0 at L_max; repeated paragraphs do not
count), the mean repetition reward, mean words and the share of answers inside their range.

Everything is written to --out (default iterations/bench_grpo_length/): base.json, grpo/ (the trainer's
folder: adapter, metrics.jsonl, metrics.json), tuned.json, result.json. Rerunning resumes the training
from its last checkpoint and reuses finished evaluations.

  python bench/grpo_length.py                       # defaults: ~20 min on 2 busy CPU cores
  python bench/grpo_length.py --steps 2 --eval-limit 4 --out /tmp/g  # smoke: a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selflengthen.methods import lwzero_rewards as R  # noqa: E402
from selflengthen.runfolder.store import atomic_write_json, read_json, read_jsonl  # noqa: E402

DATA = REPO / "selflengthen" / "data"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "iterations" / "bench_grpo_length"))
    p.add_argument("--steps", type=int, default=10, help="GRPO optimizer steps")
    p.add_argument("--group", type=int, default=6, help="num_generations (answers per prompt)")
    p.add_argument("--prompts-per-step", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=160, help="answer budget in tokens, training and eval")
    p.add_argument("--l-max-words", type=int, default=250, help="L_max of the length reward")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--train-words-min", type=int, default=30)
    p.add_argument("--train-words-max", type=int, default=100)
    p.add_argument("--samples", type=int, default=4, help="eval answers per held-out prompt")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate only the first N fitting prompts")
    p.add_argument("--eval-max-hi", type=int, default=150,
                   help="held-out prompts whose range ends at most here: the regime the training targets cover")
    p.add_argument("--eval-open", type=int, default=16,
                   help="open eval prompts (eval_mixed_en) given a constraint in the training band, held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 on a shared CPU (2 threads under load ran 70x slower here)")
    return p.parse_args()


def train_rows(args, eval_prompts: set[str]) -> list[dict]:
    import yaml

    templates = yaml.safe_load((REPO / "selflengthen" / "conf" / "prompts" / "en.yaml").read_text())["length_control"]
    rng = random.Random(args.seed)
    rows = []
    for i, seed in enumerate(read_jsonl(DATA / "seeds_en.jsonl")):
        words = rng.randint(args.train_words_min, args.train_words_max)
        row = R.constrained_row(f"seed{i:03d}", seed["prompt"], words, templates, rng)
        if row["hi"] < args.l_max_words:
            rows.append(row)
    overlap = {r["prompt"] for r in rows} & eval_prompts
    assert not overlap and not any(seed["prompt"] in eval_prompts for seed in read_jsonl(DATA / "seeds_en.jsonl"))
    return rows


def eval_rows(args) -> list[dict]:
    """Held-out constrained prompts: the shipped eval prompts whose range fits the trained regime, and the
    shipped open eval prompts (eval_mixed_en.jsonl, never trained on) with a length constraint phrased in
    the way the training prompts get theirs (`--eval-open` of them, targets in the training band)."""
    import yaml

    rows = [R.eval_row(f"eval{i:03d}", r) for i, r in enumerate(read_jsonl(DATA / "eval_en.jsonl"))]
    rows = [r for r in rows if r["hi"] < args.l_max_words and r["hi"] <= args.eval_max_hi]
    templates = yaml.safe_load((REPO / "selflengthen" / "conf" / "prompts" / "en.yaml").read_text())["length_control"]
    rng = random.Random(args.seed + 1)
    open_ = [r for r in read_jsonl(DATA / "eval_mixed_en.jsonl") if r.get("type") in (None, "none")]
    for i, r in enumerate(open_[: args.eval_open]):
        words = rng.randint(args.train_words_min, args.train_words_max)
        row = R.constrained_row(f"open{i:03d}", r["prompt"], words, templates, rng)
        if row["hi"] < args.l_max_words:
            rows.append(row)
    return rows[: args.eval_limit] if args.eval_limit else rows


def generate(model_path: str, adapter: str | None, rows: list[dict], args) -> list[list[str]]:
    """`args.samples` sampled answers per row (temperature 0.8, as in training), seeded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                     add_generation_prompt=True) for r in rows]
    # every sample of every prompt in one batch: one decoding loop instead of one per sample
    torch.manual_seed(args.seed)
    batch = tok([t for t in texts for _ in range(args.samples)], return_tensors="pt", padding=True,
                add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**batch, do_sample=True, temperature=0.8, top_p=1.0, top_k=0,
                             max_new_tokens=args.max_tokens, pad_token_id=tok.pad_token_id)
    decoded = [tok.decode(seq, skip_special_tokens=True) for seq in ids[:, batch["input_ids"].shape[1]:]]
    return [decoded[i * args.samples:(i + 1) * args.samples] for i in range(len(rows))]


def score(rows: list[dict], answers: list[list[str]], l_max: int) -> dict:
    per = []
    for row, texts in zip(rows, answers):
        for t in texts:
            words = R.distinct_words(t)
            per.append({"id": row["id"], "lo": row["lo"], "hi": row["hi"], "words": R.count_words(t),
                        "distinct_words": words, "length_reward": R.length_reward(words, row["lo"], row["hi"], l_max),
                        "repetition_reward": R.repetition_reward(t), "text": t})
    n = len(per)
    return {
        "answers": n,
        "mean_length_reward": round(sum(p["length_reward"] for p in per) / n, 4),
        "mean_repetition_reward": round(sum(p["repetition_reward"] for p in per) / n, 4),
        "mean_words": round(sum(p["words"] for p in per) / n, 1),
        "in_range": round(sum(p["lo"] <= p["distinct_words"] <= p["hi"] for p in per) / n, 4),
        "rows": per,
    }


def evaluate(path: Path, model_path: str, adapter: str | None, rows: list[dict], args) -> dict:
    """Scores of `adapter` on `rows`, stored under a name that carries everything that made them (the rows,
    samples, budget, seed, adapter): a result is never served for other settings."""
    import hashlib

    from selflengthen.training.save import adapter_digest

    key = json.dumps([[r["prompt"], r["lo"], r["hi"]] for r in rows] + [args.samples, args.max_tokens, args.seed,
                     args.l_max_words, adapter and adapter_digest(Path(adapter))])
    path = path.with_name(f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:10]}{path.suffix}")
    if path.exists():
        return read_json(path)
    start = time.perf_counter()
    result = score(rows, generate(model_path, adapter, rows, args), args.l_max_words)
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(path, result)
    return result


def paired(base: dict, tuned: dict, reps: int = 10_000, seed: int = 0) -> dict:
    """Per held-out prompt, the mean length reward of its samples before and after; the mean of the paired
    differences and its 95% bootstrap interval over prompts (resampling prompts: they, not samples, are the
    independent units). A gain is shown only if the interval excludes zero."""
    def per_prompt(doc: dict) -> dict[str, float]:
        out: dict[str, list[float]] = {}
        for p in doc["rows"]:
            out.setdefault(p["id"], []).append(p["length_reward"])
        return {k: sum(v) / len(v) for k, v in out.items()}

    b, t = per_prompt(base), per_prompt(tuned)
    diffs = [t[k] - b[k] for k in b]
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(reps))
    return {"prompts": len(diffs), "up": sum(d > 0 for d in diffs), "down": sum(d < 0 for d in diffs),
            "mean_diff": round(sum(diffs) / len(diffs), 4), "ci95": [round(means[int(0.025 * reps)], 4),
                                                                  round(means[int(0.975 * reps) - 1], 4)]}


def train_key(model_path: str, rows: list[dict], cfg) -> dict:
    """What a finished GRPO training was made from: a rerun with the same key reuses its adapter."""
    import dataclasses
    import hashlib

    rows_digest = hashlib.sha256(json.dumps([[r["prompt"], r["lo"], r["hi"]] for r in rows]).encode()).hexdigest()
    return {"model": model_path, "rows": rows_digest, "cfg": json.loads(json.dumps(dataclasses.asdict(cfg), default=str))}


def main() -> None:
    import torch

    from selflengthen.engines.models import EMBEDDED, resolve_model_path
    from selflengthen.training.grpo_lora import GrpoConfig, train_grpo

    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_path(EMBEDDED)
    held_out = eval_rows(args)
    train = train_rows(args, {r["prompt"] for r in held_out})
    print(f"machine: {os.cpu_count()} CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}"
          f" threads {torch.get_num_threads()}; model: embedded SmolLM2-135M-Instruct")
    print(f"train prompts: {len(train)} (seeds_en + constraints), held-out prompts: {len(held_out)} x "
          f"{args.samples} samples (eval_en with a range ending at <= {args.eval_max_hi} words, and "
          f"{args.eval_open} open eval prompts with constraints)")

    t0 = time.perf_counter()
    base = evaluate(out / "base.json", model_path, None, held_out, args)
    print(f"base : length reward {base['mean_length_reward']:.3f}  in range {base['in_range']:.2f}  "
          f"words {base['mean_words']:.0f}  repetition {base['mean_repetition_reward']:.3f}  ({base['seconds']} s)")

    cfg = GrpoConfig.from_dict(dict(
        max_steps=args.steps, num_generations=args.group, prompts_per_step=args.prompts_per_step,
        batch_size=args.group, max_completion_length=args.max_tokens, l_max_words=args.l_max_words,
        lr=args.lr, save_steps=2, seed=args.seed))
    start = time.perf_counter()
    key = train_key(model_path, train, cfg)
    key_file = out / "grpo" / "bench_train_key.json"
    if (out / "grpo" / "adapter").is_dir() and (out / "grpo" / "metrics.json").exists() and \
            key_file.exists() and read_json(key_file) == key:
        metrics = read_json(out / "grpo" / "metrics.json")  # a finished training with these rows and settings
        print(f"grpo : reusing the finished run in {out / 'grpo'} (same rows and settings)")
    else:
        metrics = train_grpo(model_path, train, out / "grpo", None, cfg,
                             progress=lambda d, t: print(f"  step {d}/{t}  {time.perf_counter() - start:.0f} s",
                                                         flush=True))
        atomic_write_json(key_file, key)
    print(f"grpo : {metrics['steps']} steps in {metrics['seconds']:.0f} s; train length reward first step "
          f"{metrics['first_step'].get('rewards/length/mean', float('nan')):.3f} -> last step "
          f"{metrics['last_step'].get('rewards/length/mean', float('nan')):.3f}")

    tuned = evaluate(out / "tuned.json", model_path, str(out / "grpo" / "adapter"), held_out, args)
    print(f"tuned: length reward {tuned['mean_length_reward']:.3f}  in range {tuned['in_range']:.2f}  "
          f"words {tuned['mean_words']:.0f}  repetition {tuned['mean_repetition_reward']:.3f}  ({tuned['seconds']} s)")
    diff = paired(base, tuned)
    print(f"paired over {diff['prompts']} prompts: {diff['up']} up, {diff['down']} down; mean difference "
          f"{diff['mean_diff']:+.3f}, 95% bootstrap interval {diff['ci95'][0]:+.3f} .. {diff['ci95'][1]:+.3f}")
    result = {"args": vars(args), "held_out_prompts": len(held_out), "train_prompts": len(train), "paired": diff,
              "base": {k: v for k, v in base.items() if k != "rows"},
              "tuned": {k: v for k, v in tuned.items() if k != "rows"},
              "grpo": metrics, "wall_s": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "result.json", result)
    print(f"length reward on held-out prompts: {base['mean_length_reward']:.3f} -> {tuned['mean_length_reward']:.3f}"
          f"  (wall {result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
