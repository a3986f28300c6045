"""method=lwzero on the fake engine and trainer: prompts from the pool with length targets, held-out eval
prompts never trained on, predicted ranges cached in the run folder, adapters chained round to round."""

from __future__ import annotations

import json

from conftest import REPO, compose, finished_run
from selflengthen.runfolder.store import read_jsonl

# train=lora: the fake trainer (experiment=fake) stands in for LoRA and checks the LoRA keys, not GRPO's
LW = ["method=lwzero", "train=lora", "iterations=2", "rl_prompts.per_round=0", "rl_prompts.words_min=100",
      "rl_prompts.words_max=400"]


def test_method_config_selects_the_grpo_trainer():
    cfg = compose("method=lwzero")
    assert cfg.train.backend == "grpo" and cfg.method.name == "lwzero"
    assert compose().train.backend == "trl"  # Self-Lengthen keeps SFT


def test_lwzero_rounds_write_prompt_rows_and_chain_adapters(tmp_path):
    seeds = [row["prompt"] for row in read_jsonl(REPO / "selflengthen" / "data" / "seeds_en.jsonl")]
    held_out = tmp_path / "held_out.jsonl"  # two seed instructions, with a constraint, are held out
    held_out.write_text("".join(json.dumps({"prompt": f"{s} Write about 300 words.", "type": "about",
                                            "target": 300}) + "\n" for s in seeds[:2]))
    s = finished_run(tmp_path / "run", *LW, f"eval.prompt_file={held_out}", "rl_prompts.unconstrained=0.25")
    run = s.run_dir
    for r in (1, 2):
        summary = json.loads((run / f"round_{r:03d}/summary.json").read_text())
        assert list(summary["stages"]) == ["self_instruct", "rl_prompts", "train"]
        rows = read_jsonl(run / f"round_{r:03d}/rl_prompts/generator.jsonl")
        assert rows and all(0 <= row["lo"] < row["hi"] for row in rows)
        assert not any(row["prompt"].startswith(seeds[0]) or row["prompt"].startswith(seeds[1]) for row in rows)
        assert any(row["prompt"].startswith(seeds[2]) for row in rows)  # the rest of the pool is used
        kinds = summary["stages"]["rl_prompts"]["kinds"]
        assert kinds.get("predicted", 0) > 0 and sum(kinds.values()) == len(rows)
        for row in rows:
            assert row["messages"] == [{"role": "user", "content": row["prompt"]}]
            if row["constraint"]["type"] != "predicted":
                assert any(ch.isdigit() for ch in row["prompt"])  # the constraint is phrased into the prompt
    two = json.loads((run / "round_002/summary.json").read_text())
    assert two["adapters_in"] == {"generator": "round_001/train/generator/adapter"}
    assert (run / "range_predictions.json").exists()


def test_targets_past_the_trainers_l_max_are_dropped_and_counted(tmp_path):
    from selflengthen.stages import rl_prompts
    from selflengthen.stages.common import RoundContext
    from selflengthen.training.grpo_lora import GrpoConfig

    s = finished_run(tmp_path / "run", "method=lwzero", "train=lora", "iterations=1", "rl_prompts.per_round=0")
    ctx = RoundContext(s=s, round_no=9, engine=None, adapters={}, method=s.method,
                       train_cfg=GrpoConfig.from_dict({"l_max_words": 1200}))
    section = rl_prompts.run(ctx)
    rows = read_jsonl(ctx.stage_dir(rl_prompts.NAME) / "generator.jsonl")
    assert rows and all(r["hi"] < 1200 for r in rows)
    assert section["rejections"]["target_beyond_l_max"] > 0
    assert section["prompts"] + section["rejections"]["target_beyond_l_max"] == section["pool"]
