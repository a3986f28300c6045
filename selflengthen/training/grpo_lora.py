"""GRPO with LoRA (LongWriter-Zero, DESIGN §7): prompt rows in, a peft adapter folder out.

Owns one job: prompt rows `{"id", "prompt" (text or chat messages), "lo", "hi"}` in; TRL's `GRPOTrainer`
samples `num_generations` answers per prompt, scores them with the rewards of `selflengthen/methods/lwzero_rewards.py`
(length against [lo, hi], format, repetition, optionally a quality reward model), normalises each reward
within its group and sums them with the configured weights (TRL's `normalize_then_sum`), and updates a
LoRA adapter. The paper's settings are the defaults: group 32, KL 0, temperature 0.8, 14k-token answers,
150 steps. It starts from the base model with a fresh LoRA, or continues `init_adapter` (e.g. the last
Self-Lengthen generator) loaded trainable.

Rollouts are TRL's own `generate` (CPU, one GPU); `use_vllm: true` switches to TRL's vLLM colocate mode on
GPUs (vLLM shares the training GPU; needs `pip install vllm`).

On disk, inside `out_dir`:
  checkpoints/checkpoint-N/    Trainer checkpoints (adapter, optimizer, scheduler, RNG) every `save_steps`;
                               a rerun after a crash resumes from the last one; deleted after success.
  checkpoints/resume_key.json  what the checkpoints were trained on; a mismatch restarts instead of resuming.
  metrics.jsonl                one line per logged step: each reward's mean, answer length, KL (beta > 0),
                               tokens/s; on resume, lines after the checkpoint's step are dropped and redone.
  adapter/                     the final adapter, written as adapter.tmp and renamed, so it exists only whole.
  metrics.json                 the run's summary (atomic).

Heavy libraries (torch, transformers, peft, trl, datasets) are imported inside the functions that use them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from selflengthen.support import tracking
from selflengthen.methods import lwzero_rewards as R
from selflengthen.writing.filters import DEFAULTS as FILTER_DEFAULTS
from selflengthen.runfolder.store import append_bytes, atomic_write_bytes, atomic_write_json, check_no_links, reset_dir
from selflengthen.training import launch, resolve_dtype
from selflengthen.training.launch import Launch
from selflengthen.training.save import prepare_resume

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (steps done, total steps)

REWARDS = ("length", "format", "repetition", "quality")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo")
WORDS_PER_TOKEN = 0.75  # English prose; L_max in words when l_max_words is not given
DEFAULT_WEIGHTS = {"length": 1.0, "format": 1.0, "repetition": 1.0, "quality": 0.0}

THINK_SYSTEM_PROMPT = (
    "Think about the request first, inside <think>...</think>, then write the answer inside "
    "<answer>...</answer>. Write nothing outside these two blocks."
)


def _rule(**kw) -> dict:
    from selflengthen.support.checks import rule

    return rule(**kw)


@dataclass
class GrpoConfig(Launch):
    """GRPO settings (`train:` with backend grpo); defaults follow the LongWriter-Zero paper where it gives
    one. Every value is type- and range-checked (config.parse_section) before anything loads."""

    lr: float = field(default=1e-5, metadata=_rule(gt=0.0))  # LoRA wants more than full fine-tuning's 1e-6
    max_steps: int = field(default=150, metadata=_rule(ge=1))  # paper: 150 optimizer steps
    num_generations: int = field(default=32, metadata=_rule(ge=2, fix="GRPO compares answers: use >= 2 "
                                                                      "(paper 32)"))
    prompts_per_step: int = field(default=1, metadata=_rule(ge=1))  # each gives num_generations answers
    batch_size: int = field(default=8, metadata=_rule(ge=1))  # answers per forward/backward pass
    max_completion_length: int = field(default=14336, metadata=_rule(ge=1))  # paper: 14k-token answers
    l_max_words: int = field(default=0, metadata=_rule(ge=0))  # 0 = max_completion_length * 0.75 words
    temperature: float = field(default=0.8, metadata=_rule(gt=0.0))  # paper: 0.8
    top_p: float = field(default=1.0, metadata=_rule(gt=0.0, le=1.0))
    beta: float = field(default=0.0, metadata=_rule(ge=0.0))  # KL coefficient; paper: 0 (no reference model)
    epsilon: float = field(default=0.2, metadata=_rule(gt=0.0, lt=1.0))  # PPO clip range
    loss_type: str = field(default="dapo", metadata=_rule(choices=LOSS_TYPES))  # token-level: no short bias
    num_iterations: int = field(default=1, metadata=_rule(ge=1))  # optimisation passes per batch (mu)
    scheduler: str = field(default="constant", metadata=_rule(choices=("constant", "constant_with_warmup",
                                                                       "cosine", "linear")))
    warmup_ratio: float = field(default=0.0, metadata=_rule(ge=0.0, lt=1.0))
    think: bool = False  # True: reward <think>…</think><answer>…</answer>, count the answer only
    system_prompt: Optional[str] = None  # a system message for every prompt (None: the think instruction if think)
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    quality_model: Optional[str] = None  # a sequence-classification reward model; None = no quality reward
    language: str = field(default="en", metadata=_rule(choices=tuple(FILTER_DEFAULTS)))  # n-gram check
    dup_threshold: float = field(default=0.5, metadata=_rule(gt=0.0, le=1.0))  # near-duplicate Jaccard
    lora_r: int = field(default=16, metadata=_rule(ge=1))
    lora_alpha: int = field(default=32, metadata=_rule(ge=1))
    lora_dropout: float = field(default=0.0, metadata=_rule(ge=0.0, lt=1.0))  # 0: sampling = training policy
    target_modules: str | list = "all-linear"
    dtype: str = field(default="auto", metadata=_rule(choices=("auto", "bf16", "fp32")))
    save_steps: int = field(default=10, metadata=_rule(ge=1))
    seed: int = field(default=0, metadata=_rule(ge=0))
    gradient_checkpointing: bool = False
    logging_steps: int = field(default=1, metadata=_rule(ge=1))
    use_vllm: bool = False  # TRL's vLLM colocate mode for rollouts (GPU + vllm installed)
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata=_rule(gt=0.0, lt=1.0))
    # rollouts with transformers' continuous batching (TRL's use_transformers_continuous_batching): answers of a
    # group are decoded without padding each one to the longest; off with use_vllm (vLLM batches continuously)
    continuous_batching: bool = False

    def check(self) -> None:
        """Cross-field rules (parse_section reports a ValueError here as a ConfigError)."""
        n = self.prompts_per_step * self.num_generations
        self.check_launch(n // self.batch_size if n % self.batch_size == 0 else None)  # training/launch.py
        if n % self.batch_size:
            raise ValueError(f"batch_size={self.batch_size} must divide prompts_per_step * num_generations = {n}. "
                             f"Fix: use a divisor of {n}")
        unknown = sorted(set(self.weights) - set(REWARDS))
        if unknown:
            raise ValueError(f"weights has unknown reward(s) {unknown}. Fix: use {', '.join(REWARDS)}")
        bad = {k: w for k, w in self.weights.items()
               if not isinstance(w, (int, float)) or isinstance(w, bool) or not w >= 0}
        if bad:
            raise ValueError(f"weights {bad} must be non-negative numbers")
        if not any(self.weights.get(k, 0) > 0 for k in REWARDS):
            raise ValueError("weights are all 0. Fix: give at least one reward a positive weight (length: 1)")
        if self.continuous_batching and self.use_vllm:
            raise ValueError("continuous_batching and use_vllm are both on: they are two ways to roll out. Fix: "
                             "set train.continuous_batching=false (vLLM batches continuously itself) or use_vllm=false")
        if self.weights.get("quality", 0) > 0 and not self.quality_model:
            raise ValueError("weights.quality > 0 needs quality_model (a reward model path). Fix: set "
                             "train.quality_model or train.weights.quality=0")

    @classmethod
    def from_dict(cls, d: Optional[dict], key: str = "train") -> "GrpoConfig":
        """Build from a plain dict (the Hydra `train` group). Unknown keys and bad values raise ConfigError
        (a ValueError) naming the key; `weights` may list only the rewards it changes."""
        from selflengthen.support.checks import as_dict, parse_section

        d = as_dict(d)
        d.pop("backend", None)
        if isinstance(d.get("weights"), dict):
            d["weights"] = {**DEFAULT_WEIGHTS, **d["weights"]}
        return parse_section(cls, d, key)

    @property
    def l_max(self) -> int:
        """L_max of the length reward in words."""
        return self.l_max_words or int(self.max_completion_length * WORDS_PER_TOKEN)


# --- the run ----------------------------------------------------------------------------------------

def train_grpo(model_path: str, rows: list[dict], out_dir: Path, init_adapter: Optional[str],
               cfg: GrpoConfig, progress: Optional[ProgressFn] = None) -> dict:
    """GRPO-train a LoRA adapter on prompt `rows`; save it to `out_dir/adapter` and return the metrics dict.

    A rerun after a crash resumes from the last checkpoint in `out_dir/checkpoints` (same rows and settings);
    a rerun with a larger `max_steps` continues from there too."""
    out_dir = Path(out_dir)
    examples = to_examples(rows, cfg)  # fail on bad rows before touching the disk
    check_no_links(out_dir / "metrics.jsonl")  # a linked out_dir is refused before anything is made in it
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    resume = prepare_resume(ckpt_dir, _resume_key(model_path, examples, init_adapter, cfg), "GRPO")
    if launch.should_launch(cfg):  # accelerate launch: N processes run this function again; rank 0 saves
        return launch.launch("selflengthen.training.grpo_lora:train_grpo", model_path, rows, out_dir, init_adapter, cfg)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl", keep_until=resume or 0)
    trainer = build_trainer(model_path, examples, ckpt_dir, init_adapter, cfg,
                            callbacks=[_progress_callback(progress), metrics_log.callback()])

    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - start

    # the adapter, whole (training/save.py): launched, every process helps gather the weights and rank 0 alone
    # writes adapter and metrics. Only the "default" adapter is saved: with beta > 0 and an init adapter, TRL
    # keeps a frozen "ref" copy next to it.
    if launch.save(trainer, out_dir, lambda folder: trainer.model.save_pretrained(
            str(folder), selected_adapters=["default"])) is None:
        return {}
    reset_dir(ckpt_dir)
    metrics = {
        "loss": float(result.training_loss),
        "steps": int(trainer.state.global_step),
        "resumed_from_step": resume,
        "rows": len(rows),
        "seconds": round(seconds, 3),
        **metrics_log.summary(),
        "dtype": "bf16" if trainer.args.bf16 else "fp32",
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def to_examples(rows: list[dict], cfg: GrpoConfig) -> list[dict]:
    """Prompt rows -> TRL examples `{"prompt": [messages], "lo", "hi"}`; raises ValueError on a bad row."""
    if not rows:
        raise ValueError("train_grpo got no prompt rows: nothing to sample answers for")
    system = cfg.system_prompt or (THINK_SYSTEM_PROMPT if cfg.think else "")
    examples = []
    for i, row in enumerate(rows):
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if isinstance(prompt, str) and prompt.strip():
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        else:
            raise ValueError(f"prompt row {i}: expected 'prompt' as text or chat messages, got {str(row)[:200]}")
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        lo, hi = row.get("lo"), row.get("hi")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)) \
                or not 0 <= lo <= hi < cfg.l_max:
            raise ValueError(f"prompt row {i} ({row.get('id')}): need 0 <= lo <= hi < L_max={cfg.l_max} words, "
                             f"got lo={lo!r}, hi={hi!r}; raise max_completion_length or l_max_words")
        examples.append({"prompt": messages, "lo": float(lo), "hi": float(hi)})
    return examples


def reward_funcs(cfg: GrpoConfig) -> tuple[list[Callable], list[float]]:
    """TRL reward functions (`f(prompts, completions, lo, hi, **kw) -> list[float]`) for every reward with a
    positive weight, and their weights in the same order."""
    filt = FILTER_DEFAULTS[cfg.language]

    def answers(completions) -> list[str]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [R.answer_text(t, cfg.think) for t in texts]

    def length(prompts, completions, lo, hi, **kw) -> list[float]:
        words = [R.distinct_words(a, cfg.dup_threshold) for a in answers(completions)]
        if kw.get("log_metric"):
            kw["log_metric"]("answer_words", sum(words) / len(words))
        return [R.length_reward(w, lo_, hi_, cfg.l_max) for w, lo_, hi_ in zip(words, lo, hi)]

    def format(prompts, completions, **kw) -> list[float]:  # noqa: A001 - TRL logs it under this name
        return [R.format_reward(c[-1]["content"] if isinstance(c, list) else c, cfg.think) for c in completions]

    def repetition(prompts, completions, **kw) -> list[float]:
        return [R.repetition_reward(a, filt, cfg.dup_threshold) for a in answers(completions)]

    scorer = R.QualityModel(cfg.quality_model) if cfg.quality_model else None

    def quality(prompts, completions, **kw) -> list[float]:
        users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        return scorer.score(users, answers(completions))

    funcs = {"length": length, "format": format, "repetition": repetition, "quality": quality}
    chosen = [name for name in REWARDS if cfg.weights.get(name, 0) > 0]
    return [funcs[name] for name in chosen], [float(cfg.weights[name]) for name in chosen]


def build_trainer(model_path: str, examples: list[dict], ckpt_dir: Path, init_adapter: Optional[str],
                  cfg: GrpoConfig, callbacks: list = ()):
    """The GRPOTrainer for `examples` (base model + LoRA, or + `init_adapter` loaded trainable)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    use_bf16 = resolve_dtype(cfg.dtype) == "bf16"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    peft_config = None
    if init_adapter:
        # Continue the given adapter (e.g. Self-Lengthen's last generator) instead of stacking a new one.
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    else:
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    funcs, weights = reward_funcs(cfg)
    completions_per_step = cfg.prompts_per_step * cfg.num_generations
    args = GRPOConfig(
        output_dir=str(ckpt_dir), learning_rate=cfg.lr, max_steps=cfg.max_steps, lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        per_device_train_batch_size=cfg.batch_size,
        # one optimizer step per group batch, split over the processes when launched (same effective batch)
        gradient_accumulation_steps=launch.grad_accum(completions_per_step // cfg.batch_size),
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, top_p=cfg.top_p, beta=cfg.beta, epsilon=cfg.epsilon,
        loss_type=cfg.loss_type, num_iterations=cfg.num_iterations,
        reward_weights=weights, multi_objective_aggregation="normalize_then_sum",  # DESIGN §7
        use_vllm=cfg.use_vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        use_transformers_continuous_batching=cfg.continuous_batching,
        transformers_continuous_batching_config=_continuous_batching_config(cfg, completions_per_step, tokenizer),
        gradient_checkpointing=cfg.gradient_checkpointing, bf16=use_bf16,
        use_cpu=not torch.cuda.is_available(), seed=cfg.seed, data_seed=cfg.seed,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        logging_steps=cfg.logging_steps, report_to=tracking.report_to(), run_name=tracking.run_name(), disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(examples),
                          processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # our callbacks log instead of printing
    return trainer


def _continuous_batching_config(cfg: GrpoConfig, completions: int, tokenizer) -> Optional[dict]:
    """transformers' continuous-batching settings for the rollouts. On a GPU TRL's own (half the free memory for
    the paged KV cache). On the CPU that default is half the free RAM, allocated at every rollout: the cache is
    sized to one group batch instead (every answer's prompt and completion in 256-token pages)."""
    import torch

    if not cfg.continuous_batching or torch.cuda.is_available():
        return None
    page = 256
    longest_prompt = min(int(getattr(tokenizer, "model_max_length", 4096) or 4096), 4096)
    pages = -(-(longest_prompt + cfg.max_completion_length) // page)
    return {"page_size": page, "num_blocks": completions * pages}


# --- metrics, resume, saving ------------------------------------------------------------------------

class MetricsLog:
    """Appends one JSON line per logged step to `metrics.jsonl`: TRL's reward means (`rewards/<name>/mean`),
    completion length in tokens, answer length in words, KL (when beta > 0), loss, and tokens/s (prompt and
    answer tokens through rollouts and updates together) since the previous line. Lines after `keep_until` (the checkpoint a resumed run restarts from) are dropped first,
    so a resumed run does not log a step twice."""

    KEEP = ("loss", "reward", "reward_std", "kl", "entropy", "answer_words", "completions/mean_length",
            "completions/clipped_ratio", "learning_rate", "grad_norm", "num_tokens")

    def __init__(self, path: Path, keep_until: int):
        self.path = Path(path)
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line: the process died mid-write
                if row.get("step", 0) <= keep_until:
                    kept.append(line + "\n")
        atomic_write_bytes(self.path, "".join(kept).encode("utf-8"))  # no link followed (store)
        self.rows: list[dict] = []
        self._last: Optional[tuple[float, float]] = None  # (time, num_tokens) at the previous line

    def add(self, step: int, logs: dict) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        for key, value in logs.items():
            if key in self.KEEP or (key.startswith("rewards/") and key.endswith("/mean")):
                row[key] = value
        now, tokens = time.perf_counter(), logs.get("num_tokens")
        if tokens is not None and self._last is not None and now > self._last[0]:
            row["tokens_per_s"] = round((tokens - self._last[1]) / (now - self._last[0]), 2)
        if tokens is not None:
            self._last = (now, tokens)
        append_bytes(self.path, (json.dumps(row) + "\n").encode("utf-8"))
        self.rows.append(row)

    def callback(self):
        from transformers import TrainerCallback

        metrics_log = self

        class MetricsCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                metrics_log._last = (time.perf_counter(), state.num_input_tokens_seen or 0)

            def on_log(self, args, state, control, logs=None, **kwargs):
                # step logs, not the final summary; with several processes rank 0 writes them
                if logs and state.is_world_process_zero and any(k.startswith("rewards/") for k in logs):
                    metrics_log.add(state.global_step, logs)

        return MetricsCallback()

    def summary(self) -> dict:
        """Means over this call's steps, plus the first and last step's rewards (did it learn?)."""
        if not self.rows:
            return {}
        keys = sorted({k for r in self.rows for k in r if k not in ("step", "time", "num_tokens", "learning_rate")})
        out = {}
        for k in keys:
            values = [r[k] for r in self.rows if isinstance(r.get(k), (int, float))]
            if values:
                out[f"mean_{k}"] = round(sum(values) / len(values), 4)
        out["first_step"] = {k: v for k, v in self.rows[0].items() if k.startswith("rewards/")}
        out["last_step"] = {k: v for k, v in self.rows[-1].items() if k.startswith("rewards/")}
        return out


def _resume_key(model_path: str, examples: list[dict], init_adapter: Optional[str], cfg: GrpoConfig) -> str:
    """What a checkpoint must have been trained on to be resumed: model, prompts, rewards, sampling and
    optimiser settings. Left out on purpose: max_steps (training longer is a continuation), and the throughput
    knobs (batch_size, save/logging steps, gradient checkpointing, use_vllm, continuous_batching)."""
    throughput = {"max_steps", "batch_size", "save_steps", "logging_steps", "gradient_checkpointing", "use_vllm",
                  "vllm_gpu_memory_utilization", "continuous_batching"}
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in throughput}
    h = hashlib.sha256(json.dumps([str(model_path), str(init_adapter or ""), settings], sort_keys=True).encode())
    for ex in examples:
        h.update(json.dumps(ex, ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()


def _progress_callback(progress: Optional[ProgressFn]):
    """Reports (step, max_steps) after every optimizer step and sends TRL's log lines to `logging`."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if progress is not None:
                progress(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            log.info("grpo step %d/%d %s", state.global_step, state.max_steps, logs)

    return ProgressCallback()
