"""LoRA training stage: adapter files, continuation, completion-only labels, max_length, resume, errors.

Runs on the tiny random Llama from conftest (seconds); one slow test trains the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selflengthen.training.sft_lora import TrainConfig, build_trainer, train_lora

# A higher lr than the paper's so a few steps move the tiny adapter measurably.
FAST = dict(max_steps=3, grad_accum=2, lr=1e-3, save_steps=1000, warmup_ratio=0.0)


def _rows(n: int = 8) -> list[dict]:
    return [{"messages": [
        {"role": "system", "content": "You write long articles."},
        {"role": "user", "content": f"Write a detailed essay about topic {i}."},
        {"role": "assistant", "content": "The committee met on Tuesday. It reviewed the budget. " * (i + 1)},
    ]} for i in range(n)]


def _lora_state(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def _logits(model_dir: Path, adapter: Path | None, text: str = "Write a detailed essay"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("round1")
    steps = []
    metrics = train_lora(str(tiny_model_dir), _rows(), out, None, TrainConfig(**FAST),
                         progress=lambda step, total: steps.append((step, total)))
    metrics["_progress"] = steps
    return out, metrics


def test_training_writes_adapter_metrics_and_changes_the_model(trained, tiny_model_dir):
    import math


    out, metrics = trained
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not (out / "adapter.tmp").exists() and not (out / "checkpoints").exists()
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["steps"] == 3 and math.isfinite(on_disk["loss"])
    assert metrics["_progress"] == [(1, 3), (2, 3), (3, 3)]
    # batch_size 1: no padding at all; the answer is a strict part of what is trained on
    assert on_disk["padding_tokens"] == 0 and 0 < on_disk["answer_tokens"] < on_disk["tokens"]
    assert on_disk["truncated"] == 0 and on_disk["tokens_per_s"] > 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    targeted = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all-linear
    base, tuned = _logits(tiny_model_dir, None), _logits(tiny_model_dir, out / "adapter")
    assert (base - tuned).abs().max() > 1e-5


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_training_in_either_dtype_saves_an_adapter_that_changes_the_model(tiny_model_dir, tmp_path, dtype):
    """bf16 is what `dtype: auto` picks on GPUs and on CPUs with native bf16; fp32 elsewhere. Either trains (a
    CPU without native bf16 emulates it: slower, still correct) and says which it used."""
    import math

    train_lora(str(tiny_model_dir), _rows(4), tmp_path, None, TrainConfig(**{**FAST, "max_steps": 2}, dtype=dtype))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["dtype"] == dtype and math.isfinite(on_disk["loss"])
    base, tuned = _logits(tiny_model_dir, None), _logits(tiny_model_dir, tmp_path / "adapter")
    assert (base - tuned).abs().max() > 1e-5


def test_auto_dtype_is_bf16_only_where_the_hardware_multiplies_it_natively(monkeypatch):
    import torch

    from selflengthen.engines import transformers_engine
    from selflengthen.training import resolve_dtype

    def machine(cuda: bool, cuda_bf16: bool = False, cpu_bf16: bool = False) -> str:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
        monkeypatch.setattr(transformers_engine, "cpu_has_fast_bf16", lambda: cpu_bf16)
        return resolve_dtype("auto")

    assert machine(cuda=False, cpu_bf16=True) == "bf16"  # avx512_bf16 / AMX
    assert machine(cuda=False, cpu_bf16=False) == "fp32"  # AVX2 only: emulated bf16 is slower
    assert machine(cuda=True, cuda_bf16=True) == "bf16"
    assert machine(cuda=True, cuda_bf16=False, cpu_bf16=True) == "fp32"  # the GPU trains: its support decides
    assert resolve_dtype("fp32") == "fp32" and resolve_dtype("bf16") == "bf16"  # asked for: as asked


def test_continuing_starts_from_previous_adapter_and_moves_it(trained, tiny_model_dir, tmp_path):
    import torch
    from peft import get_peft_model_state_dict

    out1, _ = trained
    saved = _lora_state(out1 / "adapter")
    # Before any step, the trainer's adapter is exactly the saved one (loaded, not stacked or re-initialised).
    trainer, _ = build_trainer(str(tiny_model_dir), _rows(), tmp_path / "ck", str(out1 / "adapter"),
                               TrainConfig(**FAST))
    loaded = get_peft_model_state_dict(trainer.model)
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert list(trainer.model.peft_config) == ["default"]  # one adapter, not two
    del trainer

    out2 = tmp_path / "round2"
    train_lora(str(tiny_model_dir), _rows(), out2, str(out1 / "adapter"), TrainConfig(**FAST))
    new = _lora_state(out2 / "adapter")
    assert set(new) == set(saved)
    assert any(not torch.equal(new[k], saved[k]) for k in saved)


def test_only_answer_tokens_carry_labels(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    rows = _rows(2)
    trainer, _ = build_trainer(str(tiny_model_dir), rows, tmp_path / "ck", None, TrainConfig(**FAST))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for i, row in enumerate(rows):
        prompt = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(row["messages"], tokenize=False)
        n_prompt, n_full = len(tok(prompt)["input_ids"]), len(tok(full)["input_ids"])
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        assert (labels[:n_prompt] == -100).all()  # system + user + assistant header: no loss
        assert (labels[n_prompt:n_full] == ids[n_prompt:n_full]).all()  # the answer and its <|im_end|>
        assert (labels[n_full:] == -100).all()  # padding, if any
        answer = tok.decode(ids[n_prompt:n_full])
        assert answer.startswith(row["messages"][-1]["content"]) and "<|im_end|>" in answer


def test_max_length_is_ours_not_trls_default(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_answer = "Paragraph one explains the idea. " * 300
    rows = [{"messages": [{"role": "user", "content": "Write at length."},
                          {"role": "assistant", "content": long_answer}]}]
    n_full = len(tok(tok.apply_chat_template(rows[0]["messages"], tokenize=False))["input_ids"])
    assert 1200 < n_full < 4096  # longer than TRL's default max_length of 1024
    trainer, truncated = build_trainer(str(tiny_model_dir), rows, tmp_path / "ck", None,
                                       TrainConfig(**FAST, max_length=4096))
    example = trainer.train_dataset[0]
    assert truncated == 0 and len(example["input_ids"]) == n_full
    assert sum(label != -100 for label in example["labels"]) > 1024
    # and a max_length below the row is reported, not silent
    _, truncated = build_trainer(str(tiny_model_dir), rows, tmp_path / "ck2", None,
                                 TrainConfig(**FAST, max_length=512))
    assert truncated == 1


def test_every_row_the_trainer_gets_ends_with_the_end_of_turn_token(tiny_model_dir, tmp_path):
    """What the train stage hands the real trainer (training.fitting_rows with train_lora) is whole: a row
    longer than max_length is dropped, and every tokenised row that is trained ends with <|im_end|>."""
    from transformers import AutoTokenizer

    from selflengthen.training import fitting_rows

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    rows = _rows(3) + [{"messages": [{"role": "user", "content": "Write at length."},
                                     {"role": "assistant", "content": "Paragraph one explains the idea. " * 300}]}]
    cfg = TrainConfig(**FAST, max_length=512)
    kept, dropped = fitting_rows(train_lora, str(tiny_model_dir), rows, cfg)
    assert dropped == 1 and kept == rows[:3]
    trainer, truncated = build_trainer(str(tiny_model_dir), kept, tmp_path / "ck", None, cfg)
    assert truncated == 0
    for i in range(len(kept)):
        ids = trainer.train_dataset[i]["input_ids"]
        last = max(k for k, t in enumerate(ids) if t == end)
        assert all(t in (end,) or tok.decode([t]).isspace() for t in ids[last:])  # nothing after it but a newline
        assert tok.decode(ids[:last]).rstrip().endswith("It reviewed the budget.")
    # the same row, let through, would lose its end: that is what the drop prevents
    trainer, truncated = build_trainer(str(tiny_model_dir), rows, tmp_path / "ck2", None, cfg)
    cut = trainer.train_dataset[3]["input_ids"]
    assert truncated == 1 and len(cut) == 512 and cut[-1] != end and cut[-2] != end


def test_crashed_training_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "round1"
    cfg = TrainConfig(**{**FAST, "max_steps": 4, "save_steps": 1})

    def crash_at_step_3(step, total):
        if step == 3:  # on_step_end runs before step 3's checkpoint: checkpoint-2 is the last one
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train_lora(str(tiny_model_dir), _rows(), out, None, cfg, progress=crash_at_step_3)
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "adapter").exists()

    steps = []
    metrics = train_lora(str(tiny_model_dir), _rows(), out, None, cfg,
                         progress=lambda step, total: steps.append(step))
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    assert steps == [3, 4]  # steps 1-2 were not redone
    assert (out / "adapter" / "adapter_model.safetensors").exists() and not (out / "checkpoints").exists()


def test_checkpoints_of_other_data_are_not_resumed(tiny_model_dir, tmp_path):
    out = tmp_path / "round1"
    cfg = TrainConfig(**{**FAST, "max_steps": 2, "save_steps": 1})

    def crash(step, total):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lora(str(tiny_model_dir), _rows(), out, None, cfg, progress=crash)
    metrics = train_lora(str(tiny_model_dir), _rows(4), out, None, cfg)
    assert metrics["resumed_from_step"] is None and metrics["steps"] == 2


def test_empty_rows_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no training rows"):
        train_lora(str(tiny_model_dir), [], tmp_path / "out", None, TrainConfig())
    assert not (tmp_path / "out").exists()


def test_row_without_final_answer_is_rejected(tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(ValueError, match="row 0"):
        train_lora(str(tiny_model_dir), rows, tmp_path / "out", None, TrainConfig())


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-4})
    assert TrainConfig.from_dict({"lr": 2e-4, "target_modules": ["q_proj"]}).lr == 2e-4


def test_yaml_default_matches_dataclass():
    import yaml

    conf = Path(__file__).resolve().parents[2] / "selflengthen" / "conf" / "train" / "lora.yaml"
    values = yaml.safe_load(conf.read_text())
    assert values.pop("backend") == "trl"  # read by the recipe, not a TrainConfig field
    assert TrainConfig.from_dict(values) == TrainConfig()


@pytest.mark.slow
def test_embedded_model_learns_from_a_few_rows(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selflengthen.engines.models import EMBEDDED, resolve_model_path

    model_dir = resolve_model_path(EMBEDDED)
    answer = ("The lighthouse keeper climbed the stairs every evening at dusk. He polished the lens, "
              "trimmed the wick and wrote the weather in his log, as his father had done before him.")
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]}
            for q in ("Write a story.", "Tell me a tale.", "Write something short.", "Begin a story.")]
    metrics = train_lora(str(model_dir), rows, tmp_path / "out", None,
                         TrainConfig(max_steps=8, grad_accum=1, lr=1e-3, warmup_ratio=0.0))
    assert metrics["loss"] == metrics["loss"] and metrics["loss"] < 10

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Write a story."}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)

    def greedy(model):
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=24, do_sample=False)
        return tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = greedy(base)
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(base, str(tmp_path / "out" / "adapter"))
    after = greedy(tuned)
    assert after != before
    assert "lighthouse" in after.lower()
