"""bench/gpu_check.py at toy size on the CPU: the GPU path's check (slot loop at a full batch, a LoRA SFT step,
a GRPO step, a whole experiment=fake-sized round with the transformers engine and the real trainer on a randomly
initialised model of each architecture) runs here too, so it cannot rot before a GPU runs it."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def test_gpu_check_runs_every_step_at_toy_size():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--toy", "--batch", "3", "--tokens", "6"])
    assert [r["arch"] for r in results] == ["llama", "qwen2"]
    for r in results:
        loop = r["slot_loop"]
        assert loop["batch"] == 3 and loop["new_tokens"] == 3 * 6  # a full batch: every request decoded 6 tokens
        assert loop["tokens_per_s"] > 0
        assert r["sft_step"]["steps"] == 1 and r["sft_step"]["loss"] > 0
        assert r["grpo_step"]["steps"] == 1
    first = results[0]["fake_round"]
    assert first["round"] == 1 and first["instructions"] == 4 and first["initial_items"] == 8
    assert "generator" in first["trained"]  # the round's rows trained an adapter (the extender may defer)
    assert "fake_round" not in results[1]
