"""Typed settings built from the Hydra config, and every check of user input.

Hydra lives at the edge (cli.py): it hands the composed config to `Settings.from_config`, which checks it
and returns plain typed sections. Each section is a dataclass owned by the package that uses it — a stage's
settings sit in the stage's file and are found through the method's stage list, the engine's keyword
arguments are checked by engines/, the trainer's by training/ — and parsed by config.parse_section, which
checks every value's type and range. So a bad value stops the run in well under a second, before any
lock, manifest or model, with one message naming the key and the fix; a new stage adds its section
without editing this file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

from selflengthen.config import ConfigError, as_dict, check_value, need, parse_section, rule
from selflengthen.stages.common import Decoding

__all__ = ["ConfigError", "Settings", "read_prompt_rows", "load_seed_file", "shipped_data", "semantic_config"]


@dataclass(frozen=True)
class RunSection:
    """`run:` — where the run lives and how often its item logs are made durable."""

    name: str = "default"
    root: str = "iterations"
    checkpoint_every: int = field(default=64, metadata=rule(ge=1, fix="use run.checkpoint_every=64"))
    checkpoint_seconds: float = field(default=30.0, metadata=rule(gt=0.0, fix="use run.checkpoint_seconds=30"))
    accept_drift: bool = False


@dataclass(frozen=True)
class ModelSection:
    """`model:` — which model plays every role."""

    name: Optional[str] = None  # a label for the preset (conf/model/<name>.yaml); not used to load anything
    path: str = "embedded:smollm2-135m"
    cache_dir: Optional[str] = None

    def check(self) -> None:
        if not self.path.strip():
            raise ConfigError("Config error: model.path='' — must name a model. Fix: set model.path to a Hugging "
                              "Face id, a local folder, or embedded:smollm2-135m")


@dataclass(frozen=True)
class Eval:
    """`eval:` — held-out evaluation."""

    every_round: bool = False
    prompt_file: Optional[str] = None
    max_new_tokens: int = field(default=1024, metadata=rule(ge=1, fix="use eval.max_new_tokens=1536"))
    limit: Optional[int] = field(default=None, metadata=rule(ge=1, fix="use eval.limit=null (all prompts) or a "
                                                                       "number of prompts >= 1"))


@dataclass(frozen=True)
class Collect:
    """`collect:` — the final data set with length control."""

    num_new: int = field(default=64, metadata=rule(ge=0, fix="use collect.num_new=0 (no fresh instructions) or more"))
    rewrite: bool = False
    max_new_tokens: int = field(default=2048, metadata=rule(ge=1))


@dataclass(frozen=True)
class Report:
    plots: bool = True


@dataclass(frozen=True)
class Settings:
    run_dir: Path
    iterations: int
    seed: int
    method_name: str
    model_path: str
    model_cache: Optional[str]
    engine: dict  # checked engine keyword arguments, with "name"
    prompts: dict
    seeds: tuple[str, ...]
    decoding: Decoding
    sections: dict  # config key -> typed section, for every stage of the method (self_instruct, extend, ...)
    train_backend: str
    train: Any  # the trainer's typed config
    eval: Eval
    collect: Collect
    run: RunSection
    plots: bool = True
    semantic: dict = field(repr=False, default_factory=dict)
    hydra_record: dict = field(repr=False, default_factory=dict)  # file name -> text, written once checks pass

    @staticmethod
    def from_config(cfg: Mapping, run_dir: Path) -> "Settings":
        return _build(cfg, Path(run_dir))

    @property
    def method(self):
        from selflengthen.methods.base import load_method

        return load_method(self.method_name)

    @property
    def checkpoint_every(self) -> int:
        return self.run.checkpoint_every

    @property
    def accept_drift(self) -> bool:
        return self.run.accept_drift

    def section(self, key: str) -> Any:
        try:
            return self.sections[key]
        except KeyError:
            raise KeyError(f"no config section {key!r} for method {self.method_name}") from None

    def __getattr__(self, key: str) -> Any:  # s.extend, s.generate, ... for the method's sections
        sections = self.__dict__.get("sections") or {}
        if key in sections:
            return sections[key]
        raise AttributeError(key)


# Keys that change what a run produces, for every method; a method adds its own (Method.semantic_keys).
# Resuming with a different value is "drift" (see manifest.py); everything else (engine, batch sizes, run
# folder, eval, iterations) is a throughput or reporting knob.
SEMANTIC_KEYS = ("method.name", "model.path", "seed", "prompts", "data", "decoding", "train")
NON_SEMANTIC_TRAIN = ("save_steps", "gradient_checkpointing", "dtype")


def semantic_config(cfg: Mapping, extra_keys: tuple[str, ...] = (), seed_file_sha256: Optional[str] = None) -> dict:
    out: dict = {}
    for key in SEMANTIC_KEYS + tuple(extra_keys):
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and key == "train":
            node = {k: v for k, v in node.items() if k not in NON_SEMANTIC_TRAIN}
        if key == "data" and seed_file_sha256:
            node = {**(node or {}), "seed_file_sha256": seed_file_sha256}
        out[key] = node
    return json.loads(json.dumps(out, default=str))


def read_prompt_rows(path: Path, key: str, fix: str) -> list[tuple[int, dict]]:
    """(line number, row) of a JSONL prompt file whose rows carry a non-empty string `prompt`. Every
    problem is one ConfigError naming the config `key`, the line and the `fix`."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"Config error: {key}={str(path)!r} — {why}. Fix: {fix}.")

    if path.is_symlink() and not path.exists():
        raise bad("it is a broken link")
    if not path.is_file():
        raise bad("the file does not exist" if not path.exists() else "it is not a regular file")
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
    prompts = list(dict.fromkeys(prompts))
    if len(prompts) < 2:
        raise ConfigError(f"Config error: data.seed_file={str(path)!r} — it holds {len(prompts)} distinct "
                          f"instruction(s); self-instruct shows the model two at a time, so at least 2 are needed. "
                          f"Fix: {fix}.")
    return tuple(prompts)


def shipped_data(name: str) -> Path:
    return Path(str(resources.files("selflengthen") / "data" / name))


def _prompts(cfg: Mapping) -> dict:
    prompts = as_dict(cfg.get("prompts"))
    for k in ("lang", "self_instruct", "generate", "extend", "filter"):
        need(k in prompts, f"prompts.{k}", None, "is missing from the prompts config",
             "choose a shipped prompt set with prompts=en or prompts=zh, or copy one as a template")
    from selflengthen.filters import FilterConfig

    try:
        FilterConfig.from_dict(prompts["filter"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"Config error: prompts.filter — {exc}. Fix: copy the filter section of "
                          f"conf/prompts/en.yaml and change its values") from exc
    return prompts


def _train(cfg: Mapping) -> tuple[str, Any]:
    from selflengthen.training import parse_config

    try:
        return parse_config(as_dict(cfg.get("train")))
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Config error: train — {exc}. Fix: see conf/train/*.yaml for every key and its "
                          f"allowed values.") from exc


def _engine(cfg: Mapping) -> dict:
    from selflengthen.engines import parse_config

    return parse_config(as_dict(cfg.get("engine")))


def _base_is_none(raw: Any) -> dict:
    """`adapter: none` / `base` (the spelling older configs use) means the base model, like null."""
    raw = as_dict(raw)
    if str(raw.get("adapter", "")).lower() in ("none", "null", "base"):
        raw["adapter"] = None
    return raw


def _build(cfg: Mapping, run_dir: Path) -> Settings:
    iterations = check_value("iterations", cfg.get("iterations"), int,
                             {"ge": 1, "fix": "pass iterations=1 or more (the number of rounds)"})
    seed = check_value("seed", cfg.get("seed", 0), int, {"fix": "pass seed=42 (any whole number)"})
    run = parse_section(RunSection, cfg.get("run"), "run")
    model = parse_section(ModelSection, cfg.get("model"), "model")
    engine = _engine(cfg)
    prompts = _prompts(cfg)
    decoding = parse_section(Decoding, cfg.get("decoding"), "decoding")

    method_cfg = as_dict(cfg.get("method"))
    name = method_cfg.get("name", "selflengthen")
    from selflengthen.methods.base import load_method

    try:
        method = load_method(str(name))
    except ValueError as exc:
        raise ConfigError(f"Config error: method.name={name!r} — {exc}. Fix: pick one with method=selflengthen "
                          f"(see conf/method/)") from exc
    sections = {key: parse_section(cls, _base_is_none(cfg.get(key)), key)
                for key, cls in method.config_sections().items()}
    for key, sec in sections.items():  # an `adapter` setting names one of the method's roles, or none
        adapter = getattr(sec, "adapter", None)
        need(adapter is None or adapter in method.roles, f"{key}.adapter", adapter,
             f"must be null (the base model) or one of {', '.join(method.roles)}",
             f"use {key}.adapter=null (the paper uses the base model)")
    backend, train = _train(cfg)
    ev = parse_section(Eval, cfg.get("eval"), "eval")
    collect = parse_section(Collect, cfg.get("collect"), "collect")
    report = parse_section(Report, cfg.get("report"), "report")

    data = as_dict(cfg.get("data"))
    seed_file = data.get("seed_file")
    need(seed_file is None or isinstance(seed_file, str), "data.seed_file", seed_file, "must be a file path",
         "give data.seed_file a JSONL file, or null for the shipped seeds")
    seed_path = Path(seed_file).expanduser() if seed_file else shipped_data(prompts.get("seed_file", f"seeds_{prompts['lang']}.jsonl"))
    seeds = load_seed_file(seed_path)
    seeds_sha = hashlib.sha256("\n".join(seeds).encode()).hexdigest()[:16]

    plain = as_dict(cfg)
    return Settings(
        run_dir=run_dir, iterations=iterations, seed=seed, method_name=method.name, model_path=model.path,
        model_cache=model.cache_dir, engine=engine, prompts=prompts, seeds=seeds, decoding=decoding,
        sections=sections, train_backend=backend, train=train, eval=ev, collect=collect, run=run,
        plots=report.plots, semantic=semantic_config(plain, method.semantic_keys, seeds_sha),
        hydra_record=_hydra_record(cfg),
    )


def _hydra_record(cfg: Mapping) -> dict:
    """The composed config and the overrides, as Hydra would have written them to `.hydra/` (cli.py turns
    Hydra's own writing off, so a refused command never overwrites the run's record)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        overrides = list(HydraConfig.get().overrides.task)
        return {"config.yaml": OmegaConf.to_yaml(cfg), "overrides.yaml": OmegaConf.to_yaml(overrides)}
    except Exception:  # noqa: BLE001 — composed outside a Hydra job (tests): nothing to record
        return {}
