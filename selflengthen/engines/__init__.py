"""Engines behind one small interface (see base.py). `make_engine` picks one by `engine.name`, importing
its module only then, so an unused heavy library (vLLM, torch) is never imported."""

from __future__ import annotations

from typing import Mapping

from selflengthen.engines.base import Engine, Request, SamplingParams  # noqa: F401

_ENGINES = {
    "transformers": ("selflengthen.engines.transformers_engine", "TransformersEngine"),
    "vllm": ("selflengthen.engines.vllm_engine", "VllmEngine"),
    "fake": ("selflengthen.engines.fake", "FakeEngine"),
}


def make_engine(engine_cfg: Mapping, model_path: str) -> Engine:
    """Build (not load) the engine named by `engine_cfg["name"]`; the other keys are its keyword args."""
    import importlib

    cfg = dict(engine_cfg)
    name = cfg.pop("name", None)
    if name not in _ENGINES:
        raise ValueError(f"Config error: engine.name={name!r} is not a known engine (known: {', '.join(_ENGINES)}). "
                         f"Fix: pick one with engine=transformers or engine=vllm.")
    module, cls = _ENGINES[name]
    return getattr(importlib.import_module(module), cls)(model_path, **cfg)
