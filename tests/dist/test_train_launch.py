"""LoRA SFT in two processes under `accelerate launch` (DDP on gloo, the shipped ddp config) on the embedded
model: the adapter is written once, by rank 0, and the loss matches one process within noise (same effective
batch: grad_accum is split over the processes)."""

from __future__ import annotations

import json

import pytest

from selflengthen.engines.models import resolve_model_path
from selflengthen.training.sft_lora import TrainConfig, train_lora

pytestmark = pytest.mark.dist

ROWS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Write two sentences about topic {i}."},
                                     {"role": "assistant", "content": f"Topic {i} matters to many people. "
                                                                      f"It has a long history."}]}
        for i in range(4)]
FAST = dict(max_steps=2, batch_size=1, grad_accum=2, save_steps=1000, warmup_ratio=0.0, max_length=64, lr=1e-4)


def test_two_process_ddp_matches_one_process(tmp_path):
    model = resolve_model_path("embedded:smollm2-135m", None)
    one = train_lora(model, ROWS, tmp_path / "one", None, TrainConfig(**FAST))
    two = train_lora(model, ROWS, tmp_path / "two", None,
                     TrainConfig(**FAST, launcher="accelerate", accelerate_config="ddp", num_processes=2))
    assert two["steps"] == one["steps"] == 2
    assert two["tokens"] == one["tokens"]  # counted over both processes: the same rows were trained on
    assert abs(two["loss"] - one["loss"]) < 0.1 * one["loss"]  # within noise (data order differs)
    adapter = tmp_path / "two" / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == sorted(p.name for p in (tmp_path / "one" / "adapter").iterdir())
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["adapter_sha256"]
    assert not (tmp_path / "two" / "adapter.gather").exists() and not (tmp_path / "two" / "launch.pkl").exists()
