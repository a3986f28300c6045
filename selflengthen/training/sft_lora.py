"""05_train: LoRA fine-tuning of one role (generator or extender) on its SFT rows.

Owns one job: rows `{"messages": [...]}` in, a peft adapter folder out. The last message of a row is the
assistant answer and the only part with loss: each row becomes a TRL prompt-completion example, which
SFTTrainer trains with completion-only loss (prompt tokens get label -100). LoRA sits on every linear
projection (paper: lr 1e-4, 4 epochs, cosine, warm-up 0.1, cut-off 16k tokens). From round 2 on, a role
continues from its own adapter of the previous round: that adapter is loaded trainable, never stacked.

On disk, inside `out_dir`:
  checkpoints/checkpoint-N/   Trainer checkpoints (adapter, optimizer, scheduler, RNG); a rerun after a crash
                              resumes from the last one; deleted after success.
  checkpoints/resume_key.json what the checkpoints were trained on; a mismatch restarts instead of resuming.
  adapter/                    the final adapter, written aside and swapped in (training/save.py): it exists only
                              whole, and the one it replaces is removed only after the swap.
  metrics.json                loss, steps, tokens, tokens/s, padding share, truncated rows (store.atomic_write_json).

A disk error while saving is one StoreError paragraph (store's disk-error message), not a traceback.

Heavy libraries (torch, transformers, peft, trl, datasets) are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from selflengthen.support.checks import rule
from selflengthen.runfolder.store import _disk_error, atomic_write_json, reset_dir
from selflengthen.support import tracking
from selflengthen.training import launch, resolve_dtype
from selflengthen.training.launch import Launch
from selflengthen.training.save import prepare_resume
from selflengthen.training.save import adapter_digest

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (steps done, total steps)


@dataclass
class TrainConfig(Launch):
    """LoRA SFT settings (`train:` with backend trl); defaults follow the paper where it gives one. Every
    value is type- and range-checked at start-up (config.parse_section), before any generation runs."""

    lr: float = field(default=1e-4, metadata=rule(gt=0.0, fix="use the paper's train.lr=1e-4"))
    epochs: float = field(default=4, metadata=rule(gt=0.0, fix="use the paper's train.epochs=4 (or set train.max_steps)"))
    scheduler: str = field(default="cosine", metadata=rule(choices=("cosine", "linear", "constant",
                                                                    "constant_with_warmup", "cosine_with_restarts",
                                                                    "polynomial", "inverse_sqrt")))
    warmup_ratio: float = field(default=0.1, metadata=rule(ge=0.0, lt=1.0, fix="use the paper's train.warmup_ratio=0.1"))
    max_length: int = field(default=16384, metadata=rule(ge=16))  # paper cut-off 16k tokens
    batch_size: int = field(default=1, metadata=rule(ge=1))  # rows per forward pass; 1 means zero padding
    grad_accum: int = field(default=8, metadata=rule(ge=1))  # effective batch = batch_size * grad_accum
    lora_r: int = field(default=8, metadata=rule(ge=1))  # the paper's LLaMA-Factory defaults: r 8, alpha 2r, dropout 0
    lora_alpha: int = field(default=16, metadata=rule(ge=1))
    lora_dropout: float = field(default=0.0, metadata=rule(ge=0.0, lt=1.0))
    target_modules: str | list = "all-linear"  # "all-linear" or a list of module names
    dtype: str = field(default="auto", metadata=rule(choices=("auto", "bf16", "fp32")))
    save_steps: int = field(default=50, metadata=rule(ge=1))  # checkpoint every N optimizer steps
    seed: int = 0
    gradient_checkpointing: bool = False  # less activation memory, ~30% more compute
    max_steps: int = field(default=-1, metadata=rule(ge=-1, fix="use train.max_steps=-1 (epochs decide) or >= 1"))
    group_by_length: bool = True  # with batch_size > 1: batch rows of similar length (less padding)
    packing: bool = False  # TRL BFD packing, padding-free; sequences kept apart by position_ids
    logging_steps: int = field(default=1, metadata=rule(ge=1))

    def check(self) -> None:
        self.check_launch(self.grad_accum)  # train.launcher & co. (training/launch.py)
        if self.max_steps == 0:
            raise ValueError("max_steps=0 would save an untrained adapter. Fix: use -1 (epochs decide) or >= 1")

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "TrainConfig":
        """Build from a plain dict (the Hydra `train` group); unknown keys and bad values are a ConfigError."""
        from selflengthen.support.checks import parse_section

        return parse_section(cls, d or {}, "train")


def train_lora(model_path: str, rows: list[dict], out_dir: Path, init_adapter: Optional[str],
               cfg: TrainConfig, progress: Optional[ProgressFn] = None) -> dict:
    """Train a LoRA adapter on `rows`; save it to `out_dir/adapter` and return the metrics dict.

    A rerun after a crash resumes from the last checkpoint in `out_dir/checkpoints` (same rows and settings)."""
    out_dir = Path(out_dir)
    _to_prompt_completion(rows)  # fail on bad rows before touching the disk
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    resume = prepare_resume(ckpt_dir, _resume_key(model_path, rows, init_adapter, cfg), "training")
    if launch.should_launch(cfg):  # accelerate launch: N processes run this function again; rank 0 saves
        return launch.launch("selflengthen.training.sft_lora:train_lora", model_path, rows, out_dir, init_adapter, cfg)
    trainer, truncated = build_trainer(model_path, rows, ckpt_dir, init_adapter, cfg, progress)
    counter = _TokenCounter(trainer)

    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=True if resume else None)
    except OSError as exc:  # a checkpoint write failed (disk full, read-only, I/O): one clear paragraph
        raise _disk_error(ckpt_dir, exc, "save a training checkpoint in") from exc
    seconds = time.perf_counter() - start

    counter.tokens, counter.answer_tokens, counter.padding_tokens = launch.sum_over_processes(
        counter.tokens, counter.answer_tokens, counter.padding_tokens)  # several processes: each saw its share
    adapter = launch.save(trainer, out_dir)
    if adapter is None:  # a launched process other than rank 0: rank 0 writes the adapter and metrics
        return {}
    reset_dir(ckpt_dir)  # no link followed (store)
    metrics = {
        "loss": float(result.training_loss),  # mean over the steps of this call
        "steps": int(trainer.state.global_step),
        "resumed_from_step": resume,
        "rows": len(rows),
        "tokens": counter.tokens,  # prompt + answer tokens trained on, padding excluded
        "answer_tokens": counter.answer_tokens,
        "padding_tokens": counter.padding_tokens,
        "padding_share": round(counter.padding_tokens / max(1, counter.tokens + counter.padding_tokens), 4),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(counter.tokens / seconds, 2) if seconds > 0 else 0.0,
        "truncated": truncated,
        "dtype": "bf16" if trainer.args.bf16 else "fp32",
        "adapter_sha256": adapter_digest(adapter),  # lets the train stage tell this adapter from a changed one
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def build_trainer(model_path: str, rows: list[dict], ckpt_dir: Path, init_adapter: Optional[str],
                  cfg: TrainConfig, progress: Optional[ProgressFn] = None):
    """The SFTTrainer for `rows` (base model + LoRA, dataset prepared) and the number of over-long rows.

    Separate from `train_lora` so tests and bench/train.py can look at the prepared data and batches."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    examples = _to_prompt_completion(rows)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    truncated = _count_too_long(tokenizer, rows, cfg.max_length)
    use_bf16 = resolve_dtype(cfg.dtype) == "bf16"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    model = _with_lora(model, init_adapter, cfg)

    args = SFTConfig(
        output_dir=str(ckpt_dir), max_length=cfg.max_length, learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=launch.grad_accum(cfg.grad_accum),  # split over processes: same effective batch
        gradient_checkpointing=cfg.gradient_checkpointing,  # SFTConfig's default is True: always set it
        bf16=use_bf16, use_cpu=not torch.cuda.is_available(), seed=cfg.seed, data_seed=cfg.seed,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        logging_steps=cfg.logging_steps, report_to=tracking.report_to(), run_name=tracking.run_name(), disable_tqdm=True, dataloader_num_workers=0,
        packing=cfg.packing, packing_strategy="bfd",
        # group_by_length only matters when a batch holds several rows; it cuts the padding between them.
        train_sampling_strategy="group_by_length" if cfg.group_by_length and cfg.batch_size > 1 else "random",
        completion_only_loss=True,  # explicit: the answer is the only part with loss
    )
    with _quiet_progress_bars():  # dataset preparation bars would tear through the caller's rich bar
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer, callbacks=[_progress_callback(progress)])
    trainer.remove_callback(PrinterCallback)  # disable_tqdm adds it; our callback logs instead of printing
    return trainer, truncated


def _to_prompt_completion(rows: list[dict]) -> list[dict]:
    """`{"messages": [..., answer]}` -> `{"prompt": [...], "completion": [answer]}` (TRL masks the prompt)."""
    if not rows:
        raise ValueError(
            "train_lora got no training rows. The SFT data stage produced nothing for this role, usually "
            "because every generated or extended response failed the quality filter or was dropped by "
            "length-aware sampling, so there is nothing to fine-tune on. Look at this round's summary "
            "(rejection reasons) and the 04_sft_data artifacts; generate more instructions or samples, or "
            "loosen the filter, then rerun the same command to resume."
        )
    examples = []
    for i, row in enumerate(rows):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not messages or messages[-1].get("role") != "assistant" or len(messages) < 2:
            raise ValueError(f"training row {i}: expected 'messages' with at least one prompt message and "
                             f"the assistant answer last, got {str(row)[:200]}")
        clean = [{"role": m["role"], "content": m["content"]} for m in messages]
        examples.append({"prompt": clean[:-1], "completion": clean[-1:]})
    return examples


def row_lengths(model_path: str, rows: list[dict]) -> list[int]:
    """Each row's length in tokens as the trainer sees it (the chat template rendered, answer included):
    the train stage drops rows longer than train.max_length before training (training.fitting_rows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return [_tokens(tokenizer, row) for row in rows]


def _tokens(tokenizer, row: dict) -> int:
    ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def _count_too_long(tokenizer, rows: list[dict], max_length: int) -> int:
    """Rows whose rendered chat exceeds max_length: TRL keeps their start and cuts the answer's end. The train
    stage never passes such rows (it drops them); a direct caller (bench/train.py) is warned."""
    too_long = []
    for i, row in enumerate(rows):
        n = _tokens(tokenizer, row)
        if n > max_length:
            too_long.append((i, n))
    if too_long:
        log.warning("%d of %d training rows are longer than max_length=%d tokens and will be truncated "
                    "(their answers lose the end, the end-of-turn token included); first: row %d, %d tokens. "
                    "Raise train.max_length if memory allows.", len(too_long), len(rows), max_length,
                    *too_long[0])
    return len(too_long)


def _with_lora(model, init_adapter: Optional[str], cfg: TrainConfig):
    """A fresh LoRA on all linear projections, or the previous round's adapter loaded trainable."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter:
        # Continue the same adapter (same rank and targets as last round) instead of stacking a new one.
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _resume_key(model_path: str, rows: list[dict], init_adapter: Optional[str], cfg: TrainConfig) -> str:
    """What a checkpoint must have been trained on to be resumed. Length knobs (epochs, max_steps) are
    left out on purpose: training longer from the same data is a legitimate continuation."""
    h = hashlib.sha256()
    h.update(json.dumps([str(model_path), str(init_adapter or ""), cfg.lr, cfg.scheduler, cfg.warmup_ratio,
                         cfg.max_length, cfg.batch_size, cfg.grad_accum, cfg.lora_r, cfg.lora_alpha,
                         cfg.lora_dropout, cfg.target_modules, cfg.seed, cfg.packing]).encode())
    for row in rows:
        h.update(json.dumps(row["messages"], ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()


class _TokenCounter:
    """Counts real, answer and padding tokens of every batch the loss is computed on.

    It wraps `trainer.compute_loss` rather than the collator: the dataloader fetches one batch ahead,
    so a collator sees a batch that is never trained on."""

    def __init__(self, trainer):
        self.tokens = self.answer_tokens = self.padding_tokens = 0
        inner = trainer.compute_loss

        def compute_loss(model, inputs, *args, **kwargs):
            self.add(inputs)
            return inner(model, inputs, *args, **kwargs)

        trainer.compute_loss = compute_loss

    def add(self, batch) -> None:
        n = batch["input_ids"].numel()
        if "attention_mask" in batch:
            real = int(batch["attention_mask"].sum())
        else:  # padding-free: one flattened row; pad positions carry position id 0 after the last sequence
            real = int(batch["cu_seq_lens_q"][-1]) if "cu_seq_lens_q" in batch else n
        self.tokens += real
        self.padding_tokens += n - real
        self.answer_tokens += int((batch["labels"] != -100).sum())


def _progress_callback(progress: Optional[ProgressFn]):
    """A TrainerCallback that reports (step, max_steps) after every optimizer step, e.g. to a rich bar,
    and sends the Trainer's log lines (loss, lr, grad norm) to `logging` instead of stdout."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if progress is not None:
                progress(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            log.info("step %d/%d %s", state.global_step, state.max_steps, logs)

    return ProgressCallback()


@contextlib.contextmanager
def _quiet_progress_bars():
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()
