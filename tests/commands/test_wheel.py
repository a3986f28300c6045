"""The package as a user installs it from a wheel (`pip install .` or an index), not from this checkout: the
Hydra config ships inside it, so the `selflengthen` command composes its presets and runs a round from any
folder, with no checkout on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_a_wheel_carries_the_config_and_runs_a_round_outside_the_checkout(tmp_path):
    src, wheels, site, work = tmp_path / "src", tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    # built from a copy of what a source distribution holds, so the build leaves nothing in the checkout
    shutil.copytree(REPO / "selflengthen", src / "selflengthen", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("selflengthen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(REPO)) for p in (REPO / "selflengthen" / "conf").rglob("*.yaml")}
    assert shipped and shipped <= names  # every preset, prompt file and launcher config
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    # only the installed copy is importable as selflengthen: the checkout is neither the folder nor on the path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site), "COLUMNS": "200"}
    where = subprocess.run([sys.executable, "-c", "import selflengthen; print(selflengthen.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    run = subprocess.run([sys.executable, "-m", "selflengthen", "experiment=fake", "iterations=1",
                          f"run.root={work / 'runs'}"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (folder,) = (work / "runs").iterdir()
    assert (folder / "round_001" / "extend" / "done.json").is_file()
