"""Every path a user gives is checked before any work: one ConfigError / ModelNotFound paragraph, never a
hang (FIFO), a traceback (loop, non-UTF-8) or a whole huge file read into memory (issue 14)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import compose, fake_settings
from selflengthen import cli
from selflengthen.support.checks import ConfigError
from selflengthen.engines.models import ModelNotFound, check_model_path
from selflengthen.settings import MAX_INPUT_BYTES, Settings

ROWS = "".join(json.dumps({"prompt": f"Write a long essay about topic {i}."}) + "\n" for i in range(4))


def _bad_path(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A path of the given kind and the words its message must hold."""
    p = tmp_path / f"input-{kind}"
    if kind == "folder":
        p.mkdir()
        return p, "folder"
    if kind == "fifo":
        os.mkfifo(p)
        return p, "not a regular file"
    if kind == "loop":
        os.symlink(tmp_path / "input-loop2", p)
        os.symlink(p, tmp_path / "input-loop2")
        return p, "loop of links"
    if kind == "non-utf8":
        p.write_bytes(b'{"prompt": "caf\xe9"}\n')
        return p, "not UTF-8"
    if kind == "huge":
        with open(p, "wb") as f:  # sparse: no disk used, and never read
            f.truncate(MAX_INPUT_BYTES + 1)
        return p, "refused rather than read"
    if kind == "missing":
        return p, "does not exist"
    raise AssertionError(kind)


KINDS = ["folder", "fifo", "loop", "non-utf8", "huge", "missing"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_seed_file_is_one_config_error(tmp_path, kind):
    path, words = _bad_path(tmp_path, kind)
    with pytest.raises(ConfigError) as err:
        fake_settings(tmp_path / "run", f"data.seed_file={path}")
    assert "data.seed_file" in str(err.value) and words in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_eval_prompt_file_is_refused_at_start_up(tmp_path, kind):
    """Checked by cli.check_inputs (before the lock), not when round N's eval finally reads it."""
    path, words = _bad_path(tmp_path, kind)
    s = fake_settings(tmp_path / "run", f"eval.prompt_file={path}")
    with pytest.raises(ConfigError) as err:
        cli.check_inputs(s, "run")
    assert "eval.prompt_file" in str(err.value) and words in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_seed_file(tmp_path):
    p = tmp_path / "seeds.jsonl"
    p.write_text(ROWS)
    p.chmod(0)
    with pytest.raises(ConfigError, match="cannot be read"):
        fake_settings(tmp_path / "run", f"data.seed_file={p}")


def test_empty_seed_file_path_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.seed_file"):
        fake_settings(tmp_path, "data.seed_file=''")


@pytest.mark.parametrize("kind", ["folder", "fifo", "loop", "non-utf8", "missing"])
def test_bad_model_path_is_model_not_found(tmp_path, kind):
    path, _ = _bad_path(tmp_path, kind)
    with pytest.raises(ModelNotFound, match="model.path"):
        check_model_path(str(path), None)


def test_model_folder_whose_config_is_a_fifo_does_not_hang(tmp_path):
    (tmp_path / "m").mkdir()
    os.mkfifo(tmp_path / "m" / "config.json")
    with pytest.raises(ModelNotFound, match="model.path"):
        check_model_path(str(tmp_path / "m"), None)


def test_run_root_that_is_a_file_or_a_loop_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "not a folder" in cli.bad_run_root(str(tmp_path / "file"))
    os.symlink(tmp_path / "l2", tmp_path / "l1")
    os.symlink(tmp_path / "l1", tmp_path / "l2")
    with pytest.raises(OSError):  # usable_dir turns this into one message (test_settings covers the CLI side)
        from selflengthen.runfolder.store import write_probe

        write_probe(tmp_path / "l1" / "run")


def test_shipped_eval_file_still_passes(tmp_path):
    s = Settings.from_config(compose("experiment=fake", "eval.prompt_file=eval_mixed_en.jsonl"), tmp_path)
    cli.check_inputs(s, "eval")
