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


# ranges for engine keyword arguments, whichever engine takes them
_RULES = {
    "batch_size": {"ge": 1}, "threads": {"ge": 1}, "max_batch_tokens": {"ge": 1}, "tensor_parallel_size": {"ge": 1},
    "data_parallel_size": {"ge": 1}, "max_model_len": {"ge": 16}, "gpu_memory_utilization": {"gt": 0, "le": 1},
    "cpu_kvcache_space_gib": {"gt": 0}, "max_lora_rank": {"ge": 1}, "max_loras": {"ge": 1}, "delay": {"ge": 0},
    "max_slots": {"ge": 1}, "step_seconds": {"ge": 0}, "token_seconds": {"ge": 0},
}


# Keys every engine takes, handled by the run rather than the engine class: how many copies of the model
# generate side by side and who runs them. `data_parallel_backend`: mp / ray = vLLM's own data parallelism (one
# engine handle over N replicas, on this node / on a Ray cluster; engine=vllm only), ranks = one engine process
# per rank with its items fixed by id hash (selflengthen/engines/ranks.py: any engine); auto = mp for vLLM, else ranks.
# For ranks: how they are started, and how many GPUs each one gets.
DP_BACKENDS = ("auto", "mp", "ray", "ranks")
RANK_KEYS = {
    "data_parallel_size": (int, {"ge": 1, "fix": "use engine.data_parallel_size=1 (one engine) or the number of "
                                                  "GPUs / tensor-parallel groups"}, 1),
    "data_parallel_backend": (str, {"choices": DP_BACKENDS,
                                    "fix": "use auto (vLLM's own data parallelism for engine=vllm, engine ranks "
                                           "otherwise), mp or ray (engine=vllm only), or ranks"}, "auto"),
    "rank_launcher": (str, {"choices": ("local", "srun", "ray"),
                            "fix": "use engine.rank_launcher=local (subprocesses on this node), srun (Slurm steps) "
                                   "or ray (tasks on a Ray cluster)"}, "local"),
    "gpus_per_rank": ("Optional[int]", {"ge": 0, "fix": "use engine.gpus_per_rank=null (= tensor_parallel_size), "
                                                       "1, or 0 (do not pin GPUs)"}, None),
}


def _rank_settings(cfg: dict) -> dict:
    from typing import Optional

    from selflengthen.support.checks import check_value

    out = {}
    for key, (typ, rules, default) in RANK_KEYS.items():
        if key in cfg:
            typ = Optional[int] if typ == "Optional[int]" else typ
            out[key] = check_value(f"engine.{key}", cfg.pop(key), typ, rules, default)
    return out


def parse_config(engine_cfg: Mapping) -> dict:
    """Check `engine:` before anything loads: a known name, only keyword arguments the engine takes, each of
    the right type and range, and the engine's own checks (it is constructed, which is cheap: nothing loads).
    Returns the checked dict. Every problem is one ConfigError naming the key."""
    import importlib
    import inspect
    import typing

    from selflengthen.support.checks import ConfigError, check_value, need

    cfg = dict(engine_cfg)
    ranks = _rank_settings(cfg)
    name = cfg.get("name")
    need(name in _ENGINES, "engine.name", name, f"unknown engine (known: {', '.join(_ENGINES)})",
         "pick one with engine=transformers or engine=vllm")
    backend = ranks.get("data_parallel_backend", "auto")
    if backend == "auto":
        backend = "mp" if name == "vllm" else "ranks"
    need(backend == "ranks" or name == "vllm", "engine.data_parallel_backend", backend,
         f"is vLLM's own data parallelism, which the {name} engine does not have",
         "use engine.data_parallel_backend=ranks (one engine process per rank, items split by id) or auto")
    if "data_parallel_backend" in ranks or "data_parallel_size" in ranks:
        ranks["data_parallel_backend"] = backend
    if engine_data_parallel({"name": name, **ranks}):  # the vLLM engine runs the replicas itself
        cfg["data_parallel_size"] = ranks.get("data_parallel_size", 1)
        cfg["data_parallel_backend"] = backend
    module, cls_name = _ENGINES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    params = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = {"name": name}
    for key, value in cfg.items():
        if key == "name":
            continue
        if key not in params or key in ("self", "model_path"):
            need(takes_any, f"engine.{key}", value, f"is not a setting of the {name} engine",
                 f"use one of {', '.join(k for k in params if k not in ('self', 'model_path') and params[k].kind is not params[k].VAR_KEYWORD)}")
            out[key] = value
            continue
        default = params[key].default
        out[key] = check_value(f"engine.{key}", value, hints.get(key, typing.Any), _RULES.get(key, {}),
                               None if default is inspect.Parameter.empty else default)
    try:
        cls("<not loaded>", **{k: v for k, v in out.items() if k != "name"})
    except (ValueError, TypeError, NotImplementedError) as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith("Config error") else f"Config error: engine — {msg}") from exc
    return {**out, **ranks}


def engine_data_parallel(engine_cfg: Mapping) -> bool:
    """Whether the engine itself runs `data_parallel_size` replicas (vLLM's data parallelism: backend mp or ray;
    auto for engine=vllm) rather than the run's engine ranks (selflengthen/engines/ranks.py)."""
    backend = engine_cfg.get("data_parallel_backend", "auto")
    return engine_cfg.get("name") == "vllm" and backend in ("auto", "mp", "ray")


def make_engine(engine_cfg: Mapping, model_path: str) -> Engine:
    """Build (not load) the engine named by `engine_cfg["name"]`; the other keys are its keyword args."""
    import importlib

    own = ("data_parallel_size", "data_parallel_backend") if engine_data_parallel(engine_cfg) else ()
    # the run's business, not the engine's (except the replicas vLLM runs itself)
    cfg = {k: v for k, v in engine_cfg.items() if k not in RANK_KEYS or k in own}
    name = cfg.pop("name", None)
    if name not in _ENGINES:
        raise ValueError(f"Config error: engine.name={name!r} is not a known engine (known: {', '.join(_ENGINES)}). "
                         f"Fix: pick one with engine=transformers or engine=vllm.")
    module, cls = _ENGINES[name]
    return getattr(importlib.import_module(module), cls)(model_path, **cfg)
