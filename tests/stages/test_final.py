"""The final model: the merged folder is a plain model whose outputs equal base + adapter, and the final
stages run after the last round of a fake run (collect, train on the collected rows, an eval row)."""

from __future__ import annotations

import json

import pytest

from conftest import finished_run, fake_engine


def test_merged_folder_equals_base_plus_adapter(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from selflengthen.stages.final import merge_adapter

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        expected = peft_model(ids).logits
    merge_adapter(str(tiny_model_dir), str(tmp_path / "adapter"), tmp_path / "model")
    assert not (tmp_path / "model" / "adapter_config.json").exists()  # a plain model, no peft needed
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    with torch.no_grad():
        got = merged(ids).logits
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert not torch.allclose(plain(ids).logits, expected, atol=1e-4)  # the adapter changes the output
    assert torch.allclose(got, expected, atol=1e-4)


def test_final_stages_after_the_last_round(tmp_path, caplog):
    s = finished_run(tmp_path, "final.enabled=true", "eval.every_round=true", "eval.limit=4", "collect.num_new=2")
    final = tmp_path / "final"
    rows = [json.loads(line) for line in (final / "final_data/generator.jsonl").read_text().splitlines()]
    export = [json.loads(line) for line in (tmp_path / "export/chat.jsonl").read_text().splitlines()]
    assert len(rows) == len(export) > 0 and rows[0]["messages"] == export[0]["messages"]
    done = json.loads((final / "train/generator/done.json").read_text())["summary"]
    assert done["adapter"] == "final/train/generator/adapter"
    assert done["from"] == "round_002/train/generator/adapter"  # continues from the last round's generator
    assert json.loads((tmp_path / "eval/final.json").read_text())["round"] == "final"
    # a third round makes the final model stale: it is built again from round 3
    from selflengthen import recipe
    from conftest import fake_settings

    with caplog.at_level("INFO", logger="selflengthen.stages.final"):
        recipe.run(fake_settings(tmp_path, "iterations=3", "final.enabled=true", "eval.every_round=true",
                                 "eval.limit=4", "collect.num_new=2"), fake_engine(), lambda: "fake-model")
    done = json.loads((final / "train/generator/done.json").read_text())["summary"]
    assert done["from"] == "round_003/train/generator/adapter"
    assert "building it again" in caplog.text and "changed: adapter, round" in caplog.text  # and says why


@pytest.mark.parametrize("value", ["sometimes", "1"])
def test_final_from_adapter_is_checked(tmp_path, value):
    from conftest import fake_settings
    from selflengthen.support.checks import ConfigError

    with pytest.raises(ConfigError, match="final.from_adapter"):
        fake_settings(tmp_path, f"final.from_adapter={value}")
