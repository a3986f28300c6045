"""Every key of selflengthen/conf/ with a bad value stops at start-up with one message naming the key (issue 14).

The bulk runs in-process through `Settings.from_config` (the CLI's own check): every leaf key of the default
config and of each experiment/method/engine/train/model option gets values of the wrong type and, for
numbers, an out-of-range one. A handful go through the real CLI, which must exit 2 with the key in one
paragraph, no traceback, and leave nothing behind: the run folder Hydra made for it and the job log it opened
are taken back (cli.leave_nothing); `.hydra/` is never written (cli.py turns Hydra's own record off).
"""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose, run_cli_cases
from selflengthen.support.checks import ConfigError
from selflengthen.settings import Settings

OPTIONS = [[]] + [[f"{group}={name}"] for group in ("experiment", "method", "engine", "train", "model", "prompts")
                  for name in sorted(p.stem for p in (REPO / "selflengthen" / "conf" / group).glob("*.yaml"))]

# (key, value) pairs that are fine although the walk's generic values would call them bad: any whole number is a
# seed; a float setting written as a whole number in YAML takes 1.5.
FINE = {("seed", "-1000000"), ("engine.seed", "-1000000"), ("train.seed", "-1000000")}


def _leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, node


def _bad_values(value):
    if isinstance(value, bool):
        return ["abc", 5, [1]]
    if isinstance(value, (int, float)):
        return ["abc", True, [1], -10**6]  # -10**6 is below every range that has a floor
    if isinstance(value, str):
        return [[1, 2], {"a": 1}]
    if isinstance(value, list):
        return [5, {"a": 1}]
    return [[1, 2], {"a": 1}]  # null: a list or a mapping is never what a scalar setting means


def _set(cfg, key, value):
    parts = key.split(".")
    for p in parts[:-1]:
        cfg = cfg[p]
    cfg[parts[-1]] = value


def test_every_key_of_every_config_file_refuses_a_bad_value(tmp_path):
    seen, unchecked = set(), []
    for option in OPTIONS:
        base = OmegaConf.to_container(compose(*option), resolve=True)
        for key, value in _leaves(base):
            for bad in _bad_values(value):
                if (key, repr(bad)) in seen or (key, repr(bad)) in FINE:
                    continue
                seen.add((key, repr(bad)))
                cfg = copy.deepcopy(base)
                _set(cfg, key, bad)
                try:
                    Settings.from_config(cfg, tmp_path)
                except ConfigError as exc:
                    if key not in str(exc):
                        unchecked.append(f"{option} {key}={bad!r}: message names another key: {exc}")
                except Exception as exc:  # noqa: BLE001 — anything but a ConfigError is a bug
                    unchecked.append(f"{option} {key}={bad!r}: {type(exc).__name__}: {exc}")
                else:
                    unchecked.append(f"{option} {key}={bad!r}: accepted")
    assert len(seen) > 300  # the walk really covered the config (guards against an empty compose)
    assert not unchecked, "\n".join(unchecked)


@pytest.mark.parametrize("override, key", [
    ("iterations=true", "iterations"), ("decoding.temperature=abc", "decoding.temperature"),
    ("eval.limit=abc", "eval.limit"), ("eval.limit=-1", "eval.limit"), ("decoding.top_k=-5", "decoding.top_k"),
    ("decoding.repetition_penalty=-1", "decoding.repetition_penalty"), ("train.epochs=0", "train.epochs"),
    ("train.lr=-1", "train.lr"), ("train.lr=abc", "train.lr"), ("train.lora_r=0", "train.lora_r"),
    ("train.batch_size=0", "train.batch_size"), ("train.epochs=-3", "train.epochs"),
    ("extend.min_growth=0.5", "extend.min_growth"), ("engine.delay=-1", "engine.delay"),
    ("generate.samples=1.5", "generate.samples"), ("collect.num_new=-1", "collect.num_new"),
    ("collect.max_new_tokens=abc", "collect.max_new_tokens"), ("report.plots=maybe", "report.plots"),
    ("+data.seed_fle=x.jsonl", "data.seed_fle"), ("+extnd.samples=3", "extnd"),
    ("prompts.generate.user=Write", "prompts.generate.user"),
    ("prompts.generate.user='{instrution}'", "prompts.generate.user"),
    ("prompts.extend.stage1='{text'", "prompts.extend.stage1"),
    ("+prompts.generate.usr=x", "prompts.generate.usr"),
    ("prompts.self_instruct.stop=5", "prompts.self_instruct.stop"),
    ("prompts.filter.meta_words=5", "prompts.filter.meta_words"),
    ("prompts.length_control.about=[]", "prompts.length_control.about"),
    ("engine.name=[a]", "engine.name"), ("train.backend=[a]", "train.backend"),
    ("train.target_modules=[1]", "train.target_modules"),
])
def test_listed_nonsense_names_the_key(tmp_path, override, key):
    """The cases issue 14 lists (and their neighbours) under experiment=fake, where the fake trainer still
    checks every LoRA setting it stands in for."""
    with pytest.raises(ConfigError) as err:
        Settings.from_config(compose("experiment=fake", override), tmp_path)
    assert key in str(err.value) and "Fix:" in str(err.value)


def test_engine_batch_size_zero_is_refused_for_real_engines(tmp_path):
    with pytest.raises(ConfigError, match="engine.batch_size"):
        Settings.from_config(compose("engine=transformers", "engine.batch_size=0"), tmp_path)


CLI_CASES = [("iterations=true", "iterations"), ("decoding.temperature=abc", "decoding.temperature"),
             ("train.lr=-1", "train.lr"), ("extend.min_growth=0.5", "extend.min_growth"),
             ("prompts.generate.user=no_field", "prompts.generate.user")]

def test_cli_refuses_with_one_paragraph_and_writes_nothing_of_its_own(tmp_path):
    root = tmp_path / "runs"
    parts = run_cli_cases([["experiment=fake", f"run.root={root}", f"run.name=case{i}", case]
                           for i, (case, _) in enumerate(CLI_CASES)])
    for i, ((case, key), part) in enumerate(zip(CLI_CASES, parts)):
        assert part.startswith("exit=2"), (case, part)
        assert key in part and "Fix:" in part and "Traceback" not in part, (case, part)
        run = root / f"case{i}"
        # the config is checked before Hydra starts (cli.preflight): not even the run folder or Hydra's log
        assert not run.exists(), (case, sorted(str(p.relative_to(run)) for p in run.rglob("*")))
    assert not root.exists()  # a refused command leaves nothing: no run folder, no job log, no run.root
