"""A whole round of the loop with engine=vllm on the embedded model (`./run.sh test-vllm`).

Small on purpose (two instructions, one pass, a few training steps): it checks that the real vLLM engine
drives every stage, gives its memory back before training (on the CPU: shuts down) and that the round's
artifacts and summary are complete — not that the numbers are good.
"""

from __future__ import annotations

import json

import pytest

from conftest import compose
from selflengthen import recipe
from selflengthen.engines import session
from selflengthen.settings import Settings

pytestmark = pytest.mark.vllm

SMALL = ["engine=vllm", "engine.enforce_eager=true", "engine.cpu_kvcache_space_gib=1", "engine.max_model_len=4096",
         "engine.dtype=float32", "iterations=1", "self_instruct.num_new=2", "self_instruct.per_wave=4",
         "self_instruct.max_waves=1", "self_instruct.max_new_tokens=40", "generate.samples=2",
         "generate.max_attempts=2", "generate.max_new_tokens=768",
         "extend.samples=1", "extend.passes=1", "extend.max_attempts=1", "extend.max_new_tokens=1024",
         "extend.min_growth=1.0", "train.max_steps=2", "train.max_length=1024",
         "train.grad_accum=1"]


def test_a_round_with_vllm(tmp_path):
    pytest.importorskip("vllm")
    s = Settings.from_config(compose(*SMALL), tmp_path)
    engine, _ = session.for_settings(s)
    [summary] = recipe.run(s, engine)
    rd = tmp_path / "round_001"
    for stage in ("self_instruct", "initial", "extend", "sft_data"):
        assert (rd / stage / "done.json").exists(), stage
    assert json.loads((rd / "summary.json").read_text())["round"] == 1
    assert summary["stages"]["self_instruct"]["instructions"] == 2
    assert summary["seconds"]["generate"] > 0
    # every generation went through vLLM; the engine was shut down for training and closed at the end
    assert engine.inner is None
    assert summary["stages"]["initial"]["items"] == 4
    if summary["stages"]["extend"]["kept"]:
        for role in ("generator", "extender"):
            assert (rd / "train" / role / "adapter" / "adapter_config.json").exists()
