"""Bad config values stop before any model loads, with one message naming the key and the fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, compose, fake_settings
from selflengthen.settings import ConfigError, Settings


@pytest.mark.parametrize("override, key", [
    ("iterations=0", "iterations"),
    ("engine.name=tensorrt", "engine.name"),
    ("sampling.a=-1", "sampling.a"),
    ("sampling.p=0", "sampling.p"),
    ("generate.samples=0", "generate.samples"),
    ("extend.min_growth=0", "extend.min_growth"),
    ("self_instruct.adapter=critic", "self_instruct.adapter"),
    ("decoding.top_p=1.5", "decoding.top_p"),
    ("sft.drop_lines=1.0", "sft.drop_lines"),
])
def test_nonsense_values_name_the_key_and_the_fix(tmp_path, override, key):
    with pytest.raises(ConfigError) as err:
        fake_settings(tmp_path, override)
    msg = str(err.value)
    assert msg.startswith(f"Config error: {key}=") and "Fix:" in msg


@pytest.mark.parametrize("content, why", [
    ("", "holds 0 distinct instruction"),
    ('{"prompt": "Write a long essay about tides."}\n{"prompt": "Write a long essay about tides."}\n', "holds 1 distinct instruction"),
    ('{"prompt": "a"}\n{"prompt": \n', "line 2 is not valid JSON"),
    ('{"text": "a"}\n{"text": "b"}\n', 'line 1 has no non-empty string field "prompt"'),
])
def test_bad_seed_files(tmp_path, content, why):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(content)
    with pytest.raises(ConfigError) as err:
        fake_settings(tmp_path, f"data.seed_file={seeds}")
    assert "data.seed_file" in str(err.value) and why in str(err.value)


def test_bad_train_config_is_caught_before_training(tmp_path):
    with pytest.raises(ConfigError, match="train.*lrate"):
        fake_settings(tmp_path, "train.backend=trl", "++train.lrate=0.1")
    with pytest.raises(ConfigError, match="train.dtype"):
        fake_settings(tmp_path, "train.backend=trl", "train.dtype=fp8")


def test_missing_seed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        fake_settings(tmp_path, f"data.seed_file={tmp_path / 'nope.jsonl'}")


def test_shipped_config_is_valid_for_both_languages(tmp_path):
    for lang in ("en", "zh"):
        s = Settings.from_config(compose(f"prompts={lang}"), tmp_path)
        assert s.prompts["lang"] == lang and len(s.seeds) >= 20


PROBE = """
import runpy, sys
sys.argv = ["selflengthen", *sys.argv[1:]]
try:
    runpy.run_module("selflengthen", run_name="__main__")
except SystemExit as exc:
    print("exit", exc.code, "torch_loaded", "torch" in sys.modules)
"""


def test_cli_stops_before_any_model_loads_with_one_paragraph(tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE, "iterations=0", f"run.root={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert "exit 2 torch_loaded False" in proc.stdout  # stopped before torch (let alone a model) was imported
    assert "iterations=0" in proc.stderr and "Fix:" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_unusable_run_root_is_one_clear_message(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "selflengthen", "experiment=fake", f"run.root={blocker}"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2
    assert "cannot hold runs" in proc.stderr and "run.root" in proc.stderr  # store.check_run_root's message
    assert "Traceback" not in proc.stderr
