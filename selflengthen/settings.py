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
import re
import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

from selflengthen.support.checks import ConfigError, as_dict, check_value, need, parse_section, rule
from selflengthen.training import NON_SEMANTIC_TRAIN
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
    # idle slots of a continuous-batching engine run later attempts of items still under way; the records
    # and artifacts are the same with or without (stages.common.Attempts)
    speculate: bool = True
    # the last round trains only the roles used after it (the answering role); the others (Self-Lengthen's
    # extender) are trained when a later `iterations=` needs them (recipe.complete_deferred). Same adapters
    defer_unused: bool = True


@dataclass(frozen=True)
class ModelSection:
    """`model:` — which model plays every role."""

    name: Optional[str] = None  # a label for the preset (selflengthen/conf/model/<name>.yaml); not used to load anything
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
    judge: Optional[str] = None  # LongBench-Write S_q: null = off, "self" = the run's model, or a judge model path
    decoding: Any = None  # eval.decoding, parsed as EvalDecoding (the eval's own sampling, judge included)


@dataclass(frozen=True)
class EvalDecoding(Decoding):
    """`eval.decoding:` — LongBench-Write's (evaluation/pred.py: do_sample, temperature 0.5, no repetition
    penalty; top_p / top_k left at transformers' defaults, 1.0 and 50; its judge also samples at 0.5)."""

    temperature: float = field(default=0.5, metadata=rule(ge=0.0, fix="use LongBench-Write's eval.decoding.temperature=0.5"))
    top_p: float = field(default=1.0, metadata=rule(gt=0.0, le=1.0, fix="use eval.decoding.top_p=1.0 (off)"))
    top_k: int = field(default=50, metadata=rule(ge=0, fix="use eval.decoding.top_k=50 (transformers' default)"))
    repetition_penalty: float = field(default=1.0, metadata=rule(gt=0.0, fix="use eval.decoding.repetition_penalty=1.0 (off)"))


DEFAULT_KINDS = {"about": 0.40, "range": 0.25, "above": 0.10, "below": 0.25}  # eval/add_length_control.py


def check_collect(c) -> None:
    """collect.min_words / max_words / kinds: the rules across the fields of `collect:` (Collect.check)."""
    from selflengthen.writing.length_control import KINDS

    if c.max_words is not None and c.max_words <= c.min_words:
        raise ConfigError(f"Config error: collect.max_words={c.max_words} must be above collect.min_words="
                          f"{c.min_words}. Fix: use the paper's 2000 and 8000, or scale both to your budgets")
    kinds = dict(c.kinds)
    fix = f"use the paper's collect.kinds={DEFAULT_KINDS}"
    for kind, w in kinds.items():
        need(kind in KINDS, f"collect.kinds.{kind}", w, f"is not a constraint kind ({', '.join(KINDS)})", fix)
        need(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0, f"collect.kinds.{kind}", w,
             "must be a weight >= 0", fix)
    need(sum(kinds.values()) > 0, "collect.kinds", kinds, "needs a weight above 0", fix)


@dataclass(frozen=True)
class Collect:
    """`collect:` — the final data set with length control."""

    num_new: int = field(default=64, metadata=rule(ge=0, fix="use collect.num_new=0 (no fresh instructions) or more"))
    rewrite: bool = False
    max_new_tokens: int = field(default=2048, metadata=rule(ge=1))
    # the paper keeps answers of min_words up to, not including, max_words (2,000-8,000; null = no upper bound)
    min_words: int = field(default=2000, metadata=rule(ge=0, fix="use the paper's collect.min_words=2000, or 0"))
    max_words: Optional[int] = field(default=8000, metadata=rule(ge=1, fix="use the paper's collect.max_words=8000"))
    # constraint kinds drawn with these weights (the paper: about 0.40, range 0.25, above 0.10, below 0.25)
    kinds: dict = field(default_factory=lambda: dict(DEFAULT_KINDS))
    sample_answers: bool = True  # length-aware sampling (sampling.a/p) of the fresh answers, as the paper does

    def check(self) -> None:
        check_collect(self)


@dataclass(frozen=True)
class Report:
    plots: bool = True


@dataclass(frozen=True)
class Data:
    """`data:` — where the seed instructions come from."""

    seed_file: Optional[str] = None


# top-level keys of the config besides the method's sections (a `+typo=...` must not be silently ignored)
TOP_KEYS = ("iterations", "seed", "run", "model", "engine", "prompts", "train", "method", "data", "decoding",
            "eval", "collect", "report", "hydra", "tracking")
MAX_INPUT_BYTES = 256 << 20  # a prompt file larger than this is refused rather than read into memory


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
    tracking: Any = None  # tracking.Tracking: where the loop's and the trainers' metrics go (None = nowhere)

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
# folder, eval, iterations) is a throughput or reporting knob; so are the train keys in NON_SEMANTIC_TRAIN.
SEMANTIC_KEYS = ("method.name", "model.path", "seed", "prompts", "data", "decoding", "train")


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


def read_prompt_rows(path: Path, key: str, fix: str, text_keys: tuple[str, ...] = ("prompt",)) -> list[tuple[int, dict]]:
    """(line number, row) of a JSONL prompt file whose rows carry a non-empty string `prompt` (or another of
    `text_keys`: LonGen's rows call it `query`). Every problem is one ConfigError naming the config `key`,
    the line and the `fix`."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"Config error: {key}={str(path)!r} — {why}. Fix: {fix}.")

    if path.is_symlink() and not path.exists():
        raise bad("it is a broken link (or a loop of links)")
    if path.is_dir():
        raise bad("it is a folder, not a file")
    if not path.is_file():  # a FIFO or a device would block or never end: never opened
        raise bad("the file does not exist" if not path.exists() else "it is not a regular file (a pipe, socket "
                  "or device)")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise bad(f"it is {path.stat().st_size >> 20} MiB; a prompt file over {MAX_INPUT_BYTES >> 20} MiB is "
                  f"refused rather than read into memory")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"it is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except OSError as exc:
        raise bad(f"it cannot be read ({exc.strerror or exc})") from exc
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise bad(f"line {n} is not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not any(isinstance(row.get(k), str) and row[k].strip() for k in text_keys):
            raise bad(f"line {n} has no non-empty string field " + " or ".join(f'"{k}"' for k in text_keys))
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


# --- prompts: every template is checked against the fields the code formats it with -------------------

# template key -> (fields the code passes to str.format, fields it must use). A template naming another field
# would stop mid-run with a KeyError; one without a required field ignores its input (every answer the same).
_TEMPLATES = {
    "self_instruct.fewshot": ({"ins1", "ins2"}, {"ins1", "ins2"}),
    "self_instruct.judge": ({"instruction"}, {"instruction"}),
    "generate.user": ({"instruction"}, {"instruction"}),
    "extend.stage1": ({"instruction", "text"}, {"text"}),
    "extend.stage2": ({"instruction", "text"}, {"text"}),
    "length_control.about": ({"n"}, {"n"}),
    "length_control.range": ({"low", "high"}, {"low", "high"}),
    "length_control.above": ({"n"}, {"n"}),
    "length_control.below": ({"n"}, {"n"}),
    "length_control.join": ({"query", "constraint"}, {"query", "constraint"}),
    "length_control.rewrite": ({"query", "constraint"}, {"query", "constraint"}),
    "agentwrite.plan": ({"instruction", "max_steps", "min_words", "max_words"}, {"instruction"}),
    "agentwrite.step_line": ({"n", "point", "words"}, {"point"}),
    "agentwrite.write": ({"instruction", "plan", "written", "step", "words"}, {"step"}),
    "judge.user": ({"instruction", "answer"}, {"answer"}),
}
_LISTS = ("length_control.about", "length_control.range", "length_control.above", "length_control.below")
_TEXTS = {"generate.system": True, "extend.system": True, "agentwrite.system": True, "judge.system": True,
          "agentwrite.nothing_written": False, "self_instruct.task": True}  # key -> may be null
_STRINGS = {"self_instruct.stop": False, "self_instruct.judge_yes": True,  # list of strings -> must be non-empty
            "generate.stop": False, "extend.stop": False}
_TOP = {"lang": False, "seed_file": True, "eval_file": True}  # plain text -> may be null
_REQUIRED = ("lang", "self_instruct", "generate", "extend", "filter")
_FIX = "copy the matching section of selflengthen/conf/prompts/en.yaml and change only the text"


@dataclass(frozen=True)
class PromptFilter:
    """`prompts.filter:` — checked here key by key; filters.FilterConfig adds its own rules."""

    language: str = field(default="en", metadata=rule(choices=("en", "zh")))
    terminal: str = "."
    ngram: int = field(default=10, metadata=rule(ge=1))
    ngram_unit: str = field(default="word", metadata=rule(choices=("word", "zh")))
    meta_words: list = field(default_factory=list)
    meta_head_lines: int = field(default=2, metadata=rule(ge=0))
    meta_tail_lines: int = field(default=3, metadata=rule(ge=0))
    min_words: int = field(default=1, metadata=rule(ge=0))
    meta_match: str = field(default="substring", metadata=rule(choices=("substring", "word")))


def _template(key: str, value: Any, allowed: set, required: set) -> None:
    import string

    need(isinstance(value, str) and value.strip() != "", key, value, "must be a non-empty text template", _FIX)
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:  # a lone { or }
        raise ConfigError(f"Config error: {key}={value[:60]!r}... — is not a valid template ({exc}; write a "
                          f"literal brace as {{{{ or }}}}). Fix: {_FIX}") from exc
    fields_ = {re.split(r"[.\[!:]", f, 1)[0] for f in names}
    unknown = sorted(fields_ - allowed)
    need(not unknown, key, value[:60] + "...", f"names the field {{{unknown[0] if unknown else ''}}}, which is not "
         f"filled in (allowed: {', '.join('{' + a + '}' for a in sorted(allowed))})", _FIX)
    missing = sorted(required - fields_)
    need(not missing, key, value[:60] + "...", f"does not use {{{missing[0] if missing else ''}}}, so its input "
         f"would be ignored", _FIX)


def _prompts(cfg: Mapping) -> dict:
    """`prompts:` — every key checked: templates against the fields they are formatted with, texts, lists of
    strings, the filter settings. A missing optional section (length_control, agentwrite, judge) is fine
    until a step that needs it runs; an unknown key is an error (a misspelt template would be ignored)."""
    prompts = as_dict(cfg.get("prompts"))
    for k in _REQUIRED:
        need(k in prompts, f"prompts.{k}", None, "is missing from the prompts config",
             "choose a shipped prompt set with prompts=en or prompts=zh, or copy one as a template")
    sections = {k.split(".")[0] for k in (*_TEMPLATES, *_TEXTS, *_STRINGS)} | {"filter"}
    for top, value in prompts.items():
        if top in _TOP:
            need(value is None and _TOP[top] or isinstance(value, str) and value.strip() != "", f"prompts.{top}",
                 value, "must be a non-empty text" + (" (or null)" if _TOP[top] else ""), _FIX)
            continue
        need(top in sections, f"prompts.{top}", value, "is not a known key",
             f"use one of {', '.join(sorted(sections | set(_TOP)))} (check the spelling)")
        need(isinstance(value, Mapping), f"prompts.{top}", value, "must be a mapping of templates", _FIX)
        if top == "filter":
            continue
        known = {k.split(".", 1)[1] for k in (*_TEMPLATES, *_TEXTS, *_STRINGS) if k.startswith(top + ".")}
        for sub, v in value.items():
            key = f"prompts.{top}.{sub}"
            need(sub in known, key, v, "is not a known key", f"use one of {', '.join(sorted(known))} (check the spelling)")
            _prompt_value(f"{top}.{sub}", key, v)
    from selflengthen.writing.filters import FilterConfig

    parse_section(PromptFilter, prompts["filter"], "prompts.filter")
    try:
        FilterConfig.from_dict(prompts["filter"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"Config error: prompts.filter — {exc}. Fix: copy the filter section of "
                          f"selflengthen/conf/prompts/en.yaml and change its values") from exc
    return prompts


def _prompt_value(name: str, key: str, v: Any) -> None:
    if name in _TEMPLATES:
        allowed, required = _TEMPLATES[name]
        if name in _LISTS:
            need(isinstance(v, list) and v, key, v, "must be a non-empty list of templates", _FIX)
            for i, item in enumerate(v):
                _template(f"{key}[{i}]", item, allowed, required)
        else:
            _template(key, v, allowed, required)
    elif name in _TEXTS:
        need(v is None and _TEXTS[name] or isinstance(v, str), key, v,
             "must be a text" + (" (or null)" if _TEXTS[name] else ""), _FIX)
    else:
        ok = isinstance(v, list) and all(isinstance(x, str) and x for x in v) and (v or not _STRINGS[name])
        need(ok, key, v, "must be a " + ("non-empty " if _STRINGS[name] else "") + "list of non-empty strings", _FIX)


def _train(cfg: Mapping) -> tuple[str, Any]:
    from selflengthen.training import BACKENDS, parse_config

    train = as_dict(cfg.get("train"))
    backend = train.get("backend", "trl")
    need(isinstance(backend, str) and backend in BACKENDS, "train.backend", backend, "is not a known trainer",
         f"use one of {', '.join(BACKENDS)} (train=lora selects trl)")
    if backend == "fake":  # the stand-in takes the settings of the trainer it stands in for: checked as that one would
        stands_for = "grpo" if "num_generations" in train else "trl"  # train=grpo's file has it, train=lora's not
        parse_config({**{k: v for k, v in train.items() if k != "delay"}, "backend": stands_for})
        check_value("train.delay", train.get("delay", 0.0), float, {"ge": 0.0, "fix": "use train.delay=0"})
    modules = train.get("target_modules")
    need(not isinstance(modules, list) or (modules and all(isinstance(m, str) and m for m in modules)),
         "train.target_modules", modules, "must be all-linear or a non-empty list of module names",
         "use train.target_modules=all-linear")
    if backend == "grpo" and isinstance(train.get("weights"), Mapping):  # name the weight, not the section
        for k, v in train["weights"].items():
            check_value(f"train.weights.{k}", v, float, {"ge": 0.0, "fix": "use a weight >= 0 (0 = reward off)"})
    try:
        return parse_config(train)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Config error: train — {exc}. Fix: see selflengthen/conf/train/*.yaml for every key and its "
                          f"allowed values.") from exc


def _engine(cfg: Mapping) -> dict:
    from selflengthen.engines import parse_config

    engine = as_dict(cfg.get("engine"))
    need(isinstance(engine.get("name"), str), "engine.name", engine.get("name"), "must name an engine",
         "pick one with engine=transformers, engine=vllm or engine=fake")
    return parse_config(engine)


def _all_sections() -> dict:
    """Config key -> section class over every shipped method (selflengthen/methods/*.py), so a section of a
    method not selected now is still checked when set: it must not hold nonsense the next run would use."""
    import importlib
    import pkgutil

    import selflengthen.methods as pkg
    from selflengthen.methods.base import Method

    out: dict = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        try:
            method = getattr(importlib.import_module(f"selflengthen.methods.{info.name}"), "METHOD", None)
        except Exception:  # noqa: BLE001 — a method that cannot load is reported when it is selected
            continue
        if isinstance(method, Method):
            for key, cls in method.config_sections().items():
                out.setdefault(key, cls)
    return out


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
                          f"(see selflengthen/conf/method/)") from exc
    known = {**_all_sections(), **method.config_sections()}  # every method's sections are checked when set
    unknown = sorted(k for k in as_dict(cfg) if k not in known and k not in TOP_KEYS)
    need(not unknown, unknown[0] if unknown else "", cfg.get(unknown[0]) if unknown else None,
         "is not a known config key", f"use one of {', '.join(sorted(set(known) | set(TOP_KEYS)))} (check the spelling)")
    sections = {key: parse_section(cls, _base_is_none(cfg.get(key)), key)
                for key, cls in known.items() if key in cfg or key in method.config_sections()}
    for key, sec in sections.items():  # an `adapter` setting names one of the method's roles, or none
        adapter = getattr(sec, "adapter", None)
        if key not in method.config_sections():
            continue  # another method's section: its adapter names that method's roles
        need(adapter is None or adapter in method.roles, f"{key}.adapter", adapter,
             f"must be null (the base model) or one of {', '.join(method.roles)}",
             f"use {key}.adapter=null (the paper uses the base model)")
    backend, train = _train(cfg)
    ev = parse_section(Eval, cfg.get("eval"), "eval")
    ev = dataclasses.replace(ev, decoding=parse_section(EvalDecoding, ev.decoding, "eval.decoding"))
    collect = parse_section(Collect, cfg.get("collect"), "collect")
    report = parse_section(Report, cfg.get("report"), "report")

    seed_file = parse_section(Data, cfg.get("data"), "data").seed_file
    need(seed_file is None or seed_file.strip() != "", "data.seed_file", seed_file, "must be a file path",
         "give data.seed_file a JSONL file, or null for the shipped seeds")
    seed_path = Path(seed_file).expanduser() if seed_file else shipped_data(prompts.get("seed_file", f"seeds_{prompts['lang']}.jsonl"))
    seeds = load_seed_file(seed_path)
    # the parsed prompts as a JSON list: unambiguous (a line break moved between two prompts changes it)
    seeds_sha = hashlib.sha256(json.dumps(list(seeds), ensure_ascii=False).encode()).hexdigest()[:16]

    plain = as_dict(cfg)
    return Settings(
        run_dir=run_dir, iterations=iterations, seed=seed, method_name=method.name, model_path=model.path,
        model_cache=model.cache_dir, engine=engine, prompts=prompts, seeds=seeds, decoding=decoding,
        sections=sections, train_backend=backend, train=train, eval=ev, collect=collect, run=run,
        plots=report.plots, semantic=semantic_config(plain, method.semantic_keys, seeds_sha),
        hydra_record=_hydra_record(cfg), tracking=_tracking(cfg),
    )


def _tracking(cfg: Mapping):
    from selflengthen.support.tracking import Tracking

    return parse_section(Tracking, cfg.get("tracking"), "tracking")


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
