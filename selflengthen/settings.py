"""Typed settings built from the Hydra config, and every check of user input.

Hydra lives at the edge: `__main__` hands the composed config to `Settings.from_config`, which checks it
and returns plain dataclasses. Nothing heavy is imported here, so a bad value stops the run in well
under a second, before any model loads, with one message naming the key and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

ENGINES = ("transformers", "vllm", "fake")


class ConfigError(ValueError):
    """A config value that makes no sense. The message names the key and how to fix it."""


def _need(cond: bool, key: str, value: Any, rule: str, fix: str) -> None:
    if not cond:
        raise ConfigError(f"Config error: {key}={value!r} — {rule}. Fix: {fix}")


@dataclass(frozen=True)
class Decoding:
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.1


@dataclass(frozen=True)
class SelfInstruct:
    num_new: int = 64
    per_wave: int = 128
    max_waves: int = 5
    adapter: Optional[str] = None
    min_words: int = 3
    max_words: int = 500
    max_new_tokens: int = 96
    fill_from_pool: bool = True


@dataclass(frozen=True)
class Generate:
    samples: int = 2
    max_attempts: int = 20
    max_new_tokens: int = 2048
    trim_to_sentence: bool = False


@dataclass(frozen=True)
class Extend:
    samples: int = 2
    passes: int = 3
    min_growth: float = 1.2
    max_attempts: int = 20
    max_new_tokens: int = 4096
    trim_to_sentence: bool = False


@dataclass(frozen=True)
class Sampling:
    a: float = 2.0
    p: float = 3.0


@dataclass(frozen=True)
class Eval:
    every_round: bool = False
    prompt_file: Optional[str] = None
    max_new_tokens: int = 1024
    limit: Optional[int] = None


@dataclass(frozen=True)
class Settings:
    run_dir: Path
    iterations: int
    seed: int
    model_path: str
    model_cache: Optional[str]
    engine: dict
    prompts: dict
    seeds: tuple[str, ...]
    decoding: Decoding
    self_instruct: SelfInstruct
    generate: Generate
    extend: Extend
    sampling: Sampling
    drop_lines: float
    train: dict
    eval: Eval
    checkpoint_every: int
    accept_drift: bool
    plots: bool = True
    semantic: dict = field(repr=False, default_factory=dict)

    @staticmethod
    def from_config(cfg: Mapping, run_dir: Path) -> "Settings":
        return _build(cfg, Path(run_dir))


# Keys that change what a run produces. Resuming with a different value is "drift" (see manifest.py);
# everything else (engine, batch sizes, run folder, eval, iterations) is a throughput or reporting knob.
SEMANTIC_KEYS = ("model.path", "seed", "prompts", "data", "decoding", "self_instruct", "generate", "extend",
                 "sampling", "sft", "train")
NON_SEMANTIC_TRAIN = ("save_steps", "gradient_checkpointing", "dtype")


def semantic_config(cfg: Mapping) -> dict:
    out: dict = {}
    for key in SEMANTIC_KEYS:
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and key == "train":
            node = {k: v for k, v in node.items() if k not in NON_SEMANTIC_TRAIN}
        out[key] = node
    return json.loads(json.dumps(out, default=str))


def read_prompt_rows(path: Path, key: str, fix: str) -> list[tuple[int, dict]]:
    """(line number, row) of a JSONL prompt file whose rows carry a non-empty string `prompt`. Every
    problem is one ConfigError naming the config `key`, the line and the `fix`."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"Config error: {key}={str(path)!r} — {why}. Fix: {fix}.")

    if not path.is_file():
        raise bad("the file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise bad(f"cannot be read as UTF-8 text ({exc})") from exc
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise bad(f"line {n} is not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise bad(f"line {n} has no non-empty string field \"prompt\"")
        rows.append((n, row))
    return rows


def load_seed_file(path: Path) -> tuple[str, ...]:
    """Seed instructions: JSONL, one object per line with a non-empty string field `prompt`."""
    fix = "give data.seed_file a JSONL file with one {\"prompt\": \"...\"} object per line"
    prompts = [row["prompt"].strip() for _, row in read_prompt_rows(path, "data.seed_file", fix)]
    if len(prompts) < 2:
        raise ConfigError(f"Config error: data.seed_file={str(path)!r} — it holds {len(prompts)} instruction(s); "
                          f"self-instruct shows the model two at a time, so at least 2 are needed. Fix: {fix}.")
    return tuple(dict.fromkeys(prompts))


def shipped_data(name: str) -> Path:
    return Path(str(resources.files("selflengthen") / "data" / name))


def _as_dict(node: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(node or {})


def _positive_ints(section: str, obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(obj, name)
        _need(isinstance(v, int) and v >= 1, f"{section}.{name}", v, "must be a whole number >= 1",
              f"set {section}.{name}=1 or more")


def _section(cls, cfg: Mapping, key: str):
    raw = _as_dict(cfg.get(key, {}))
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    _need(not unknown, f"{key}.{unknown[0] if unknown else ''}", None, "is not a known key",
          f"use one of {sorted(known)} (check the spelling)")
    return cls(**raw)


def _build(cfg: Mapping, run_dir: Path) -> Settings:
    iterations = cfg.get("iterations")
    _need(isinstance(iterations, int) and iterations >= 1, "iterations", iterations,
          "the number of rounds must be a whole number >= 1", "pass iterations=1 or more")

    engine = _as_dict(cfg.get("engine"))
    _need(engine.get("name") in ENGINES, "engine.name", engine.get("name"), f"unknown engine (known: {', '.join(ENGINES)})",
          "pick one with engine=transformers or engine=vllm")

    model = _as_dict(cfg.get("model"))
    _need(isinstance(model.get("path"), str) and model["path"].strip() != "", "model.path", model.get("path"),
          "must name a model", "set model.path to a Hugging Face id, a local folder, or embedded:smollm2-135m")

    prompts = _as_dict(cfg.get("prompts"))
    for k in ("lang", "self_instruct", "generate", "extend", "filter"):
        _need(k in prompts, f"prompts.{k}", None, "is missing from the prompts config",
              "choose a shipped prompt set with prompts=en or prompts=zh, or copy one as a template")

    decoding = _section(Decoding, cfg, "decoding")
    _need(decoding.temperature >= 0, "decoding.temperature", decoding.temperature, "must be >= 0", "use 0 for greedy, 0.7 as in the paper")
    _need(0 < decoding.top_p <= 1, "decoding.top_p", decoding.top_p, "must be in (0, 1]", "use 0.8 as in the paper")

    si_raw = _as_dict(cfg.get("self_instruct"))
    if str(si_raw.get("adapter", "none")).lower() in ("none", "null", "base"):
        si_raw["adapter"] = None
    _need(si_raw.get("adapter") in (None, "generator", "extender"), "self_instruct.adapter", si_raw.get("adapter"),
          "must be none, generator or extender", "use self_instruct.adapter=none (the paper uses the base model)")
    si = SelfInstruct(**si_raw)
    _positive_ints("self_instruct", si, ("num_new", "per_wave", "max_waves", "max_new_tokens"))
    _need(0 <= si.min_words < si.max_words, "self_instruct.min_words", si.min_words,
          f"must be >= 0 and below self_instruct.max_words ({si.max_words})", "use the paper's 3 and 500")

    gen = _section(Generate, cfg, "generate")
    _positive_ints("generate", gen, ("samples", "max_attempts", "max_new_tokens"))
    ext = _section(Extend, cfg, "extend")
    _positive_ints("extend", ext, ("samples", "passes", "max_attempts", "max_new_tokens"))
    _need(ext.min_growth > 0, "extend.min_growth", ext.min_growth, "must be > 0", "use the paper's 1.2")

    sampling = _section(Sampling, cfg, "sampling")
    _need(isinstance(sampling.a, (int, float)) and sampling.a >= 0, "sampling.a", sampling.a,
          "the length-aware sampling slope must be >= 0 (0 keeps everything)", "use the paper's sampling.a=2")
    _need(isinstance(sampling.p, (int, float)) and sampling.p > 0, "sampling.p", sampling.p,
          "the length-aware sampling exponent must be > 0", "use the paper's sampling.p=3")

    drop = _as_dict(cfg.get("sft")).get("drop_lines", 0.2)
    _need(0 <= drop < 1, "sft.drop_lines", drop, "must be in [0, 1)", "use the paper's 0.2")

    run = _as_dict(cfg.get("run"))
    every = run.get("checkpoint_every", 64)
    _need(isinstance(every, int) and every >= 1, "run.checkpoint_every", every, "must be a whole number >= 1", "use 64")

    ev = _section(Eval, cfg, "eval")
    train = _as_dict(cfg.get("train"))
    backend = train.get("backend", "trl")
    _need(backend in ("trl", "fake"), "train.backend", backend, "must be trl (or fake, for tests)", "use train.backend=trl")
    if backend == "trl":
        from selflengthen.training.sft_lora import TrainConfig  # light: its heavy imports sit inside functions

        try:
            TrainConfig.from_dict({k: v for k, v in train.items() if k != "backend"})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Config error: train — {exc}. Fix: see conf/train/lora.yaml for every key and "
                              f"its allowed values.") from exc

    seed_file = _as_dict(cfg.get("data")).get("seed_file")
    seed_path = Path(seed_file).expanduser() if seed_file else shipped_data(prompts.get("seed_file", f"seeds_{prompts['lang']}.jsonl"))
    seeds = load_seed_file(seed_path)

    seed = cfg.get("seed", 0)
    _need(isinstance(seed, int), "seed", seed, "must be a whole number", "pass seed=42 (any integer)")

    return Settings(
        run_dir=run_dir, iterations=iterations, seed=seed, model_path=model["path"], model_cache=model.get("cache_dir"),
        engine=engine, prompts=prompts, seeds=seeds, decoding=decoding, self_instruct=si, generate=gen, extend=ext,
        sampling=sampling, drop_lines=float(drop), train=train, eval=ev, checkpoint_every=every,
        accept_drift=bool(run.get("accept_drift", False)),
        plots=bool(_as_dict(cfg.get("report")).get("plots", True)), semantic=semantic_config(_as_dict(cfg)),
    )
