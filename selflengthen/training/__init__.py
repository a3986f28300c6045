"""Trainers behind one small protocol: rows in, an adapter folder and metrics out.

A trainer is called as `trainer(model_path, rows, out_dir, init_adapter, cfg, progress=None) -> metrics`:
- `rows` are SFT rows `{"id", "messages": [...]}` (the GRPO trainer takes prompt rows instead);
- it writes `out_dir/adapter/` (a peft adapter folder, renamed into place whole) and `out_dir/metrics.json`;
- `init_adapter` is the folder it continues from (None = the base model);
- `progress(done, total)` reports optimizer steps.

`make_trainer(train_cfg)` picks one by `train.backend` and returns (function, its typed config); each trainer
is a sibling file here (torchtune's one-recipe-per-method habit), imported only when selected.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Optional, Protocol


class Trainer(Protocol):
    def __call__(self, model_path: str, rows: list[dict], out_dir: Path, init_adapter: Optional[str], cfg: Any,
                 progress: Optional[Callable[[int, int], None]] = None) -> dict: ...


# backend -> (module, trainer function, config class or None)
# train keys that change how fast or where a training runs, not what it produces: left out of the drift check
# (settings.semantic_config) and of the final stage's cache key
NON_SEMANTIC_TRAIN = ("save_steps", "gradient_checkpointing", "dtype",
                      # how many processes train: the effective batch stays the same (training/launch.py)
                      "launcher", "accelerate_config", "num_processes", "num_machines", "main_process_port")

BACKENDS = {
    "trl": ("selflengthen.training.sft_lora", "train_lora", "TrainConfig"),
    "fake": ("selflengthen.training.fake", "fake_train_lora", None),
    "grpo": ("selflengthen.training.grpo_lora", "train_grpo", "GrpoConfig"),
}


def parse_config(train_cfg: dict) -> tuple[str, Any]:
    """(backend, typed config) — every bad key or value is a ConfigError naming it. Light: nothing heavy
    imported (the trainer modules import torch & co. inside their functions)."""
    from selflengthen.support.checks import ConfigError

    cfg = dict(train_cfg)
    backend = cfg.pop("backend", "trl")
    if backend not in BACKENDS:
        raise ConfigError(f"Config error: train.backend={backend!r} — not a known trainer. Fix: use one of "
                          f"{', '.join(BACKENDS)} (train=lora selects trl)")
    module, _, config_cls = BACKENDS[backend]
    if config_cls is None:
        return backend, cfg
    return backend, getattr(importlib.import_module(module), config_cls).from_dict(cfg)


def trainer_for(backend: str) -> Trainer:
    """The trainer function of `backend` (its module imported now)."""
    module, fn, _ = BACKENDS[backend]
    return getattr(importlib.import_module(module), fn)


def make_trainer(train_cfg: dict) -> tuple[Trainer, Any]:
    """(trainer function, its typed config) for `train.backend`."""
    backend, cfg = parse_config(train_cfg)
    return trainer_for(backend), cfg


TRUNCATED_ROW = "truncated_row"


def fitting_rows(trainer: Trainer, model_path: str, rows: list[dict], cfg: Any) -> tuple[list[dict], int]:
    """(the rows the trainer can take whole, how many it could not). A row longer than the trainer's
    `max_length` would be cut by it, its answer losing the end and the end-of-turn token: trained, it teaches
    the model to run on, so it is dropped, never truncated. A trainer measures rows with its module's
    `row_lengths(model_path, rows) -> [tokens]`; one without it (GRPO takes prompts, not answers) keeps all."""
    module = getattr(trainer, "__module__", None)
    measure = getattr(importlib.import_module(module), "row_lengths", None) if module else None
    limit = cfg.get("max_length") if isinstance(cfg, dict) else getattr(cfg, "max_length", None)
    if measure is None or not limit or not rows:
        return rows, 0
    lengths = measure(model_path, rows)
    kept = [row for row, n in zip(rows, lengths) if n <= limit]
    return kept, len(rows) - len(kept)


def resolve_dtype(dtype: str) -> str:
    """The trainers' `dtype`: "auto" -> bf16 on a GPU that supports it, and on a CPU that multiplies bf16 natively
    (avx512_bf16 / AMX: LoRA steps on the embedded model ran 1.6x as fast as fp32, bench/README.md); fp32
    elsewhere (a CPU that emulates bf16 runs it slower than fp32, a GPU without bf16 needs fp32)."""
    if dtype != "auto":
        return dtype
    import torch

    from selflengthen.engines.transformers_engine import cpu_has_fast_bf16

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"
