"""Resume on a real engine: the tiny random Llama on the transformers engine (sampled decoding, the slot loop
where each request draws from its own seeded torch.Generator), driven through the real CLI and killed with
SIGKILL inside extension and inside training. The finished artifacts must equal an uninterrupted run's.

The fake engine's text depends only on its own request, so its kill tests cannot tell whether a real engine's
randomness is per request; this one can: after a kill the resumed run batches different requests together.
Training uses the fake trainer (`+train.delay` keeps the new adapter aside long enough to be killed in the
middle of the swap); the tiny model's nonsense passes the filter because the test allows any last character.
"""

from __future__ import annotations

import os
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import _CORPUS, REPO
from faults import check_logs_clean
from conftest import tree

pytestmark = pytest.mark.slow  # ~1 min on a quiet 2-core machine, several when the cores are shared

ENV = {**os.environ, "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}


def _any_last_character() -> str:
    chars = set("".join(_CORPUS) + string.ascii_letters + string.digits + string.punctuation + "\ufffd")
    return "".join(sorted(chars - set(string.whitespace) - set("\"\\")))


def cli(model: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "selflengthen", "experiment=fake", "engine=transformers", f"model.path={model}",
            "engine.threads=1", "engine.batch_size=4", "train.backend=fake", "+train.delay=2.0",
            f"run.root={root}", "run.name=job", "iterations=1", "run.checkpoint_every=1",
            "self_instruct.per_wave=4", "self_instruct.max_waves=1", "self_instruct.max_new_tokens=16",
            "generate.samples=1", "generate.max_new_tokens=40", "generate.max_attempts=2",
            "extend.samples=2", "extend.passes=2", "extend.max_new_tokens=48",
            f'prompts.filter.terminal="{_any_last_character()}"', "prompts.filter.meta_words=[]"]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_when(cmd: list[str], ready, what: str, timeout: float = 900) -> None:
    """Start the run and SIGKILL it the moment `ready()` holds (polled every few ms)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the kill {what}: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, f"no moment {what} within {timeout} s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kills_inside_extension_and_training_change_nothing(tiny_model_dir, tmp_path):
    done = subprocess.run(cli(tiny_model_dir, tmp_path / "ref"), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = tmp_path / "ref" / "job" / "round_001"
    # sized so the tiny run keeps something at every step (otherwise the kills below would prove nothing)
    assert _lines(ref / "extend/extended.jsonl") >= 1 and _lines(ref / "sft_data/generator.jsonl") >= 1
    assert _lines(ref / "extend/passes.jsonl") >= 4

    job = tmp_path / "crash" / "job"
    rd = job / "round_001"
    ext, train = rd / "extend", rd / "train" / "generator"
    cmd = cli(tiny_model_dir, tmp_path / "crash")

    # 1: inside extension, after at least one pass record was made durable
    kill_when(cmd, lambda: _lines(ext / "passes.jsonl") >= 2, "inside extension")
    assert (rd / "initial/done.json").exists() and not (ext / "done.json").exists()
    landed_in_extension = _lines(ext / "passes.jsonl")
    assert 2 <= landed_in_extension < _lines(ref / "extend/passes.jsonl")
    check_logs_clean(job)

    # 2: inside training, with the new adapter written aside and not yet swapped in
    kill_when(cmd, lambda: (train / "adapter.new").is_dir(), "inside training")
    assert (ext / "done.json").exists() and (rd / "sft_data/done.json").exists()
    assert not (train / "done.json").exists() and not (rd / "summary.json").exists()
    check_logs_clean(job)

    again = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    check_logs_clean(job)
    assert not (train / "adapter.new").exists() and not (train / "adapter.old").exists()
    assert tree(job) == tree(tmp_path / "ref" / "job")
