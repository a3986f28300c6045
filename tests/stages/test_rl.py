"""The optional RL stage after the rounds (stages/rl.py): off by default; on, it builds prompts and GRPO-trains
the answering role from its last adapter on the tiny model, and a rerun skips what is done."""

from __future__ import annotations

import json

import pytest

from conftest import finished_run
from selflengthen.stages import rl, rl_prompts
from selflengthen.stages.common import RoundContext
from selflengthen.runfolder.store import read_jsonl

GRPO = dict(max_steps=1, num_generations=2, prompts_per_step=1, batch_size=2, max_completion_length=16,
            l_max_words=60, lr=1e-3, save_steps=1000)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Engine:
    def release(self) -> None:
        pass


def _ctx(s, tiny_model_dir, adapter=None) -> RoundContext:
    return RoundContext(s=s, round_no=s.iterations + 1, engine=_Engine(), adapters={"generator": adapter},
                        method=s.method, model_path=lambda: str(tiny_model_dir), folder=s.run_dir / "final")


def test_bad_grpo_settings_stop_at_start_up():
    with pytest.raises(ValueError, match="num_generations"):
        rl.Rl(enabled=True, grpo={"num_generations": 1}).check()


def test_disabled_rl_does_nothing(tmp_path, tiny_model_dir):
    s = finished_run(tmp_path / "run", "iterations=1")
    s.sections.update({"rl": rl.Rl(), "rl_prompts": rl_prompts.RlPrompts()})
    ctx = _ctx(s, tiny_model_dir)
    assert [st.run(ctx) for st in rl.stages()] == [{"skipped": "rl.enabled=false"}] * 2
    assert not (s.run_dir / "final").exists()


def test_rl_after_the_rounds_trains_the_generator_from_its_last_adapter(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    s = finished_run(tmp_path / "run", "iterations=1")
    start = tmp_path / "last_generator"  # stands in for the last round's (fake) adapter: a real tiny one
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(str(start / "adapter"))
    s.sections.update({"rl": rl.Rl(enabled=True, grpo=GRPO),
                       "rl_prompts": rl_prompts.RlPrompts(per_round=3, words_min=10, words_max=40)})
    ctx = _ctx(s, tiny_model_dir, adapter=str(start / "adapter"))
    prompts, trained = (st.run(ctx) for st in rl.stages())
    rows = read_jsonl(s.run_dir / "final" / "rl_prompts" / "generator.jsonl")
    assert prompts["prompts"] == len(rows) > 0 and all(r["hi"] < 60 for r in rows)
    summary = trained["generator"]
    assert summary["steps"] == 1 and summary["from"] == str(start / "adapter")  # outside the run: absolute
    assert summary["adapter"] == "final/rl/generator/adapter"
    assert ctx.adapters_out["generator"] == str(s.run_dir / "final/rl/generator/adapter")
    assert json.loads((s.run_dir / "final/rl/generator/adapter/adapter_config.json").read_text())["r"] == 16
    assert "GRPO steps" in rl.brief(trained)
    again = _ctx(s, tiny_model_dir, adapter=str(start / "adapter"))  # a rerun: both stages are done
    assert [st.run(again) for st in rl.stages()][1] == trained
    assert again.adapters_out["generator"] == ctx.adapters_out["generator"]
