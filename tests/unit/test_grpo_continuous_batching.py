"""train.continuous_batching (GRPO rollouts with transformers' continuous batching): checked against use_vllm,
passed to TRL, its KV cache sized to one group batch on the CPU, and a throughput knob (not part of the resume
key). bench/grpo_rollout.py measures it; the real rollout runs in tests/unit/test_gpu_check.py's GRPO step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from selflengthen.support.checks import ConfigError
from selflengthen.training import grpo_lora
from selflengthen.training.grpo_lora import GrpoConfig


def test_key_is_checked_passed_and_sized():
    assert GrpoConfig.from_dict({}).continuous_batching is False  # off by default: slower on CPUs
    with pytest.raises(ConfigError, match="continuous_batching"):
        GrpoConfig.from_dict({"continuous_batching": True, "use_vllm": True})
    on = GrpoConfig.from_dict({"continuous_batching": True, "max_completion_length": 300})
    tok = SimpleNamespace(model_max_length=1000)
    cb = grpo_lora._continuous_batching_config(on, 8, tok)
    assert cb == {"page_size": 256, "num_blocks": 8 * 6}  # (1000 + 300) tokens -> 6 pages per answer
    assert grpo_lora._continuous_batching_config(GrpoConfig.from_dict({}), 8, tok) is None
    rows = [{"prompt": "Write.", "lo": 1, "hi": 5}]
    key = grpo_lora._resume_key("m", grpo_lora.to_examples(rows, on), None, on)
    assert key == grpo_lora._resume_key("m", grpo_lora.to_examples(rows, on), None,
                                        GrpoConfig.from_dict({"max_completion_length": 300}))
