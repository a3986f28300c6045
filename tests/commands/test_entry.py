"""The `selflengthen` command (selflengthen/__main__.py, pyproject's [project.scripts]): `--help` is the
project's short help, the subcommands reach eval/collect/report with the same overrides, and a refused
command leaves nothing behind (no run folder, no job log), while a refusal in an existing run keeps what
was there. Run as `python -m selflengthen`, whose main is what the console script calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def cmd(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "selflengthen", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_is_short_names_the_presets_commands_and_docs_and_writes_nothing(tmp_path):
    out = cmd("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert len(text.splitlines()) <= 45  # not Hydra's dump of the whole config
    for group in ("experiment", "method", "engine", "prompts", "tracking"):
        for option in sorted(p.stem for p in (REPO / "selflengthen" / "conf" / group).glob("*.yaml")):
            if option != "fake" or group == "experiment":  # engine=fake is for tests
                assert option in text, (group, option)
    for command in ("selflengthen eval", "selflengthen collect", "selflengthen report"):
        assert command in text
    assert str(REPO / "selflengthen" / "conf" / "config.yaml") in text and "README.md" in text and "docs/" in text
    assert list(tmp_path.iterdir()) == []  # no iterations/, no run folder, no log


def test_the_command_runs_a_fake_run_and_its_subcommands_find_it(tmp_path):
    root = tmp_path / "runs"
    common = ["experiment=fake", f"run.root={root}"]
    run = cmd(*common, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((root / "fake" / "round_002" / "summary.json").read_text())["round"] == 2
    report = cmd("report", *common, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (root / "fake" / "report" / "report.json").exists()
    ev = cmd("eval", *common, "eval.limit=2", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert (root / "fake" / "eval").is_dir() and (root / "fake" / "eval.log").exists()


def test_a_refused_command_leaves_nothing_behind(tmp_path):
    root = tmp_path / "new" / "runs"
    out = cmd("experiment=fake", f"run.root={root}", "iterations=0", cwd=tmp_path)
    assert out.returncode == 2 and "iterations" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "new").exists()  # neither the run folder nor the folders above it it made
    out = cmd("engine=transformers", "model.path=/no/such/model", f"run.root={root}", cwd=tmp_path)
    assert out.returncode == 2 and "/no/such/model" in out.stderr
    assert not (tmp_path / "new").exists()
    out = cmd("eval", "engine=transformers", "model.path=/no/such/model", f"run.root={root}", cwd=tmp_path)
    assert out.returncode == 2 and not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_refusal_in_an_existing_run_keeps_what_was_there_and_adds_no_log(tmp_path):
    root = tmp_path / "runs"
    assert cmd("experiment=fake", f"run.root={root}", cwd=tmp_path).returncode == 0
    run = root / "fake"
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    out = cmd("eval", "experiment=fake", f"run.root={root}", "eval.max_new_tokens=0", cwd=tmp_path)
    assert out.returncode == 2 and "eval.max_new_tokens" in out.stderr
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before  # no eval.log, nothing removed


def test_presets_in_a_users_config_dir_are_checked_before_anything_runs(tmp_path):
    """`--config-dir` adds a folder of the user's own presets to the shipped ones (the package's config is not
    theirs to edit once installed); a sweep over them is checked job by job before any job runs, as one over
    the shipped presets is."""
    mine = tmp_path / "my-conf"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment_train").mkdir()
    conf = REPO / "selflengthen" / "conf"
    (mine / "experiment" / "mine.yaml").write_text((conf / "experiment" / "fake.yaml").read_text()
                                                   .replace("iterations: 2", "iterations: 1"))
    (mine / "experiment_train" / "mine_lora.yaml").write_text((conf / "experiment_train" / "fake_lora.yaml").read_text())
    root = tmp_path / "runs"
    out = cmd("-m", "--config-dir", str(mine), "experiment=mine", "generate.max_attempts=1,0", f"run.root={root}",
              cwd=tmp_path)
    assert out.returncode == 2 and "generate.max_attempts" in out.stderr and "Traceback" not in out.stderr
    assert not root.exists()  # the good job did not run either: the sweep was refused whole
    # a preset may hold its sweep (hydra.sweeper.params): its jobs are checked before any runs, too
    (mine / "experiment" / "swept.yaml").write_text((mine / "experiment" / "mine.yaml").read_text()
                                                    + "hydra:\n  sweeper:\n    params:\n      generate.max_attempts: 1,0\n")
    (mine / "experiment_train" / "swept_lora.yaml").write_text((mine / "experiment_train" / "mine_lora.yaml").read_text())
    out = cmd("-m", "--config-dir", str(mine), "experiment=swept", f"run.root={root}", cwd=tmp_path)
    assert out.returncode == 2 and "generate.max_attempts=0" in out.stderr and not root.exists()
    out = cmd("--config-dir", str(mine), "experiment=mine", f"run.root={root}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (root / "fake" / "round_001" / "summary.json").exists() and not (root / "fake" / "round_002").exists()


def test_hydra_options_after_the_overrides_are_read(tmp_path):
    """The command adds overrides of its own (no .hydra folder, the job's name); they go beside the user's, so
    an option written after them (`experiment=fake --cfg job`) is still Hydra's option, not a stray word."""
    out = cmd("experiment=fake", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "name: fake" in out.stdout and "engine:" in out.stdout
    assert list(tmp_path.iterdir()) == []
