"""Hostile command lines and run folders through the real entry points (python -m selflengthen / .eval /
.report / .collect): a run that does not exist, a scalar over a config section, hydra.run.dir set by hand,
sweeps with a bad job or two jobs in one folder, a job refused mid-sweep, links where the report or the log
goes, every writing command under the lock, Ctrl-C. Also drift without manifest.json and the seed hash.

The command lines run in one interpreter (imports paid once; each case under its own time limit), except
Ctrl-C, which needs a process of its own to interrupt.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import FAKE, REPO, fake_engine, fake_settings, finished_run

from selflengthen import cli, recipe
from selflengthen.runfolder import manifest
from selflengthen.support.checks import ConfigError
from selflengthen.runfolder.store import RunLock, RunLocked, StoreError

_DRIVER = r"""
import json, os, runpy, signal, sys, tempfile
from selflengthen.runfolder.store import RunLock
def hang(*_): raise TimeoutError("the command did not finish in time (blocked?)")
signal.signal(signal.SIGALRM, hang)
for i, case in enumerate(json.loads(sys.argv[1])):
    lock = RunLock(case["lock"]) if case["lock"] else None
    if lock:
        lock.acquire()
    sys.argv = [case["module"], *case["argv"]]
    err = tempfile.TemporaryFile()
    saved = os.dup(2); os.dup2(err.fileno(), 2)
    code = 0
    signal.alarm(60)
    try:
        runpy.run_module(case["module"], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        import traceback; traceback.print_exc(); code = "exception"
    finally:
        signal.alarm(0)
        sys.stderr.flush(); os.dup2(saved, 2)
        if lock: lock.release()
    err.seek(0)
    print(f"CASE {i} exit={code}\n" + err.read().decode(errors="replace") + "\nEND", flush=True)
"""

ENV = {**os.environ, "COLUMNS": "400", "SELFLENGTHEN_QUIET": "1"}


def cli_cases(cases: list[tuple]) -> list[str]:
    """`exit=<code>\n<stderr>` of each (module, argv[, run folder to hold the lock of]) case."""
    spec = [{"module": c[0], "argv": list(c[1]), "lock": str(c[2]) if len(c) > 2 and c[2] else None} for c in cases]
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(spec)], cwd=REPO, capture_output=True, text=True,
                          env=ENV, timeout=600)
    parts = [proc.stdout.split(f"CASE {i} ")[1].split("\nEND")[0] if f"CASE {i} " in proc.stdout else
             f"missing: {proc.stderr[-2000:]}" for i in range(len(cases))]
    for (mod, argv, *_), part in zip(cases, parts):
        assert "Traceback" not in part, (mod, argv, part)
    return parts


def flat(text: str) -> str:
    return " ".join(text.split())


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished one-round fake run to copy (tests change their copy)."""
    return finished_run(tmp_path_factory.mktemp("pristine") / "run", "iterations=1", "eval.limit=2",
                        "collect.num_new=2")


def fresh(pristine, tmp_path):
    """A copy of the pristine run in tmp_path, and its settings."""
    run_dir = tmp_path / "run"
    shutil.copytree(pristine.run_dir, run_dir, symlinks=True)
    return replace(pristine, run_dir=run_dir)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Every command-line case, run in one interpreter; returns (folders, {case name: exit and stderr})."""
    tmp = tmp_path_factory.mktemp("cli")
    root = tmp / "runs"
    finished_run(root / "job", "iterations=1")
    base = [*FAKE, f"run.root={root}"]
    afile = tmp / "afile"
    afile.write_text("x")
    seeds = tmp / "seeds"
    (seeds / "a").mkdir(parents=True)
    rows = "".join(json.dumps({"prompt": f"Write about topic {i} in depth."}) + "\n" for i in range(3))
    (seeds / "a" / "b.jsonl").write_text(rows)
    (seeds / "a_b.jsonl").write_text(rows)
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "selflengthen.log").write_text("keep\n")
    linked = root / "linked"
    linked.mkdir()
    (linked / "selflengthen.log").symlink_to(outside / "selflengthen.log")
    locked = root / "sweep" / "sampling.a=1.0"
    locked.mkdir(parents=True)
    named = {
        "eval_missing": ("selflengthen.commands.eval", [*base, "run.name=nosuch"]),
        "report_missing": ("selflengthen.commands.report", [*base, "run.name=nosuch"]),
        "collect_missing": ("selflengthen.commands.collect", [*base, "run.name=nosuch"]),
        "scalar_section": ("selflengthen", [*base, "run.name=new", "run=5"]),
        "run_dir_file": ("selflengthen", [*base, "run.name=new", f"hydra.run.dir={afile}"]),
        "run_dir_outside": ("selflengthen", [*base, "run.name=new", f"hydra.run.dir={tmp / 'elsewhere'}"]),
        "bad_job": ("selflengthen", ["-m", *base, "run.name=badsweep", "iterations=1", "generate.samples=1,0,2"]),
        "one_folder": ("selflengthen", ["-m", *base, "run.name=seeds", "iterations=1",
                                        f"data.seed_file={seeds / 'a' / 'b.jsonl'},{seeds / 'a_b.jsonl'}"]),
        "log_link": ("selflengthen", [*base, "run.name=linked", "iterations=1"]),
        "locked_job": ("selflengthen", ["-m", *base, "run.name=sweep", "iterations=1", "sampling.a=1.0,2.0"], locked),
    }
    before = {"tree_before": tree(root)}
    parts = cli_cases(list(named.values()))
    folders = {"root": root, "tmp": tmp, "afile": afile, "outside": outside, "locked": locked, **before}
    return folders, {k: flat(v) for k, v in zip(named, parts)}


def test_eval_report_collect_on_a_missing_run_refuse_and_list_the_runs(cases):
    folders, out = cases
    for name in ("eval_missing", "report_missing", "collect_missing"):
        text = out[name]
        assert text.startswith("exit=2") and "There is no run at" in text and "The runs in" in text, text
        assert "job" in text.split("The runs in")[1], text  # the run that does exist is listed
    assert not (folders["root"] / "nosuch").exists()


def test_bad_command_lines_refuse_before_anything_runs(cases):
    folders, out = cases
    assert out["scalar_section"].startswith("exit=2") and "run is a section of settings" in out["scalar_section"]
    for name in ("run_dir_file", "run_dir_outside"):
        assert out[name].startswith("exit=2") and "run.root and run.name" in out[name], out[name]
    assert not (folders["tmp"] / "elsewhere").exists() and folders["afile"].read_text() == "x"
    bad = out["bad_job"]
    assert bad.startswith("exit=2") and "refused before any job ran" in bad and "generate.samples=0" in bad, bad
    assert out["one_folder"].startswith("exit=2") and "share the folder" in out["one_folder"], out["one_folder"]
    for name in ("new", "badsweep", "seeds"):  # nothing made for any of them
        assert not (folders["root"] / name).exists(), name


def test_the_log_is_never_appended_through_a_link(cases):
    folders, out = cases
    text = out["log_link"]
    assert text.startswith("exit=2") and "selflengthen.log is a link" in text, text
    assert (folders["outside"] / "selflengthen.log").read_text() == "keep\n"
    assert not (folders["root"] / "linked" / "round_001").exists()


def test_a_job_refused_mid_sweep_does_not_stop_the_others(cases):
    folders, out = cases
    text = out["locked_job"]
    assert text.startswith("exit=2") and "in use by another process" in text, text
    assert "1 job(s) of the sweep were refused" in text and "sampling.a=1.0" in text.split("Refused:")[1]
    assert (folders["root"] / "sweep" / "sampling.a=2.0" / "round_001" / "summary.json").is_file()  # it ran
    assert not (folders["locked"] / "round_001").exists()


def test_report_never_writes_through_a_linked_report_folder(pristine, tmp_path):
    from selflengthen.commands import report as report_cmd
    from selflengthen.runfolder.store import LinkRefused

    s = fresh(pristine, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (s.run_dir / "report").symlink_to(outside, target_is_directory=True)
    with pytest.raises(LinkRefused, match="report"):
        report_cmd.run_report(s)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", ["run", "eval", "collect", "report"])
def test_every_writing_command_takes_the_run_lock(name, pristine, tmp_path):
    from test_hostile_records import command

    s = fresh(pristine, tmp_path)
    lock = RunLock(s.run_dir)
    lock.acquire()
    try:
        before = tree(s.run_dir)
        with pytest.raises(RunLocked):
            command(name, s)
        assert tree(s.run_dir) == before
    finally:
        lock.release()


def test_ctrl_c_is_one_line_and_the_rerun_resumes(tmp_path):
    cmd = [sys.executable, "-m", "selflengthen", *FAKE, f"run.root={tmp_path}", "run.name=job", "iterations=1",
           "engine.delay=0.25"]  # stages of seconds: Ctrl-C lands mid-run on a busy machine too
    # Ctrl-C as a terminal delivers it: a test run started in the background (`cmd &`, as CI may) hands its
    # children SIGINT ignored, and Python then never raises KeyboardInterrupt — the run would finish unmoved
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    job = tmp_path / "job"
    deadline = time.time() + 600  # a busy machine can take minutes to import torch: Ctrl-C in mid-run, not before
    while not list(job.glob("round_001/*/done.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None and list(job.glob("round_001/*/done.json")), "the run never reached a finished stage"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Interrupted" in err and "run the same command again" in flat(err), err[-2000:]
    again = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (job / "round_001" / "summary.json").is_file()


# --- drift without manifest.json -------------------------------------------------------------------------

def test_drift_holds_with_the_manifest_deleted(pristine, tmp_path):
    s = fresh(pristine, tmp_path)
    (s.run_dir / "manifest.json").unlink()
    other = fake_settings(s.run_dir, "iterations=2", "sampling.a=1.0")
    with pytest.raises(manifest.DriftError, match="sampling.a"):
        recipe.run(other, fake_engine(), lambda: "fake-model")
    assert not (s.run_dir / "round_002").exists() and not (s.run_dir / "manifest.json").exists()
    # the same config: the manifest is rebuilt from the rounds' records and the run goes on
    recipe.run(fake_settings(s.run_dir, "iterations=2"), fake_engine(), lambda: "fake-model")
    rebuilt = json.loads((s.run_dir / "manifest.json").read_text())
    assert rebuilt["semantic"] == s.semantic and any("rebuilt" in h for h in rebuilt["history"])
    assert (s.run_dir / "round_002" / "summary.json").is_file()


def test_drift_holds_when_the_round_is_not_sealed_yet(pristine, tmp_path):
    s = fresh(pristine, tmp_path)
    (s.run_dir / "manifest.json").unlink()
    (s.run_dir / "round_001" / "summary.json").unlink()  # only the stages' done records say what made them
    with pytest.raises(manifest.DriftError, match="another config"):
        recipe.run(fake_settings(s.run_dir, "iterations=1", "sampling.a=1.0"), fake_engine(), lambda: "fake-model")
    recipe.run(fake_settings(s.run_dir, "iterations=1"), fake_engine(), lambda: "fake-model")
    assert (s.run_dir / "round_001" / "summary.json").is_file()


def test_a_run_whose_records_predate_the_config_record_refuses_without_its_manifest(pristine, tmp_path):
    s = fresh(pristine, tmp_path)
    (s.run_dir / "manifest.json").unlink()
    for path in [s.run_dir / "round_001" / "summary.json", *s.run_dir.glob("round_001/**/done.json")]:
        doc = json.loads(path.read_text())
        doc.pop("semantic", None)
        path.write_text(json.dumps(doc))
    with pytest.raises(manifest.DriftError, match="accept_drift"):
        recipe.run(fake_settings(s.run_dir, "iterations=1"), fake_engine(), lambda: "fake-model")
    recipe.run(fake_settings(s.run_dir, "iterations=1", "run.accept_drift=true"), fake_engine(), lambda: "fake-model")
    assert (s.run_dir / "manifest.json").is_file()


def test_the_seed_hash_changes_with_any_change_of_the_parsed_prompts(tmp_path):
    def sha(*prompts: str) -> str:
        path = tmp_path / f"seeds{len(list(tmp_path.iterdir()))}.jsonl"
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        return fake_settings(tmp_path / "r", f"data.seed_file={path}").semantic["data"]["seed_file_sha256"]

    a = sha("Write an essay about rivers.\nCover floods.", "Describe a city.")
    b = sha("Write an essay about rivers.", "Cover floods.\nDescribe a city.")  # the line break moved
    assert a != b
    assert a == sha("Write an essay about rivers.\nCover floods.", "Describe a city.")


def test_a_manifest_with_the_old_seed_hash_of_the_same_seeds_upgrades(pristine, tmp_path):
    s = fresh(pristine, tmp_path)
    path = s.run_dir / "manifest.json"
    doc = json.loads(path.read_text())
    doc["semantic"]["data"]["seed_file_sha256"] = manifest._legacy_seed_hash(s.seeds)
    path.write_text(json.dumps(doc))
    recipe.run(fake_settings(s.run_dir, "iterations=1"), fake_engine(), lambda: "fake-model")
    assert json.loads(path.read_text())["semantic"]["data"]["seed_file_sha256"] == s.semantic["data"]["seed_file_sha256"]
    doc["semantic"]["data"]["seed_file_sha256"] = "0123456789abcdef"  # other seeds: drift
    path.write_text(json.dumps(doc))
    with pytest.raises(manifest.DriftError, match="seed_file_sha256"):
        recipe.run(fake_settings(s.run_dir, "iterations=1"), fake_engine(), lambda: "fake-model")


# --- numbers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, why", [
    ('{"prompt": "Write.", "type": "about", "target": Infinity}', "whole number"),
    ('{"prompt": "Write.", "type": "about", "target": 1e400}', "whole number"),
    ('{"prompt": "Write.", "type": "about", "target": 300.9}', "whole number"),
    ('{"prompt": "Write.", "type": "about", "target": true}', "whole number"),
    ('{"prompt": "Write.", "type": "range", "low": 100, "high": "400"}', "whole number"),
    ('{"prompt": "Write.", "type": "about", "target": 123456789012}', "more words than any answer"),
    ('{"prompt": "Write.", "type": "about", "target": 100000}', "far more than"),
])
def test_eval_targets_are_whole_reachable_numbers(row, why, tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text(row + "\n")
    s = fake_settings(tmp_path / "run", f"eval.prompt_file={path}")
    with pytest.raises(ConfigError, match=why) as err:
        cli.check_inputs(s, "eval")
    assert str(path) in str(err.value) and "Fix" in str(err.value)


def test_a_target_past_the_budget_warns(tmp_path, caplog):
    path = tmp_path / "eval.jsonl"
    path.write_text('{"prompt": "Write.", "type": "about", "target": 300.0}\n'
                    '{"prompt": "Write.", "type": "above", "target": 2000}\n')
    cli.check_inputs(fake_settings(tmp_path / "run", f"eval.prompt_file={path}"), "eval")  # 300.0 is 300
    assert "1 of 2 held-out prompts ask for more words" in caplog.text and "eval.max_new_tokens" in caplog.text


@pytest.mark.parametrize("override, key", [("train.seed=-1", "train.seed"), (f"train.seed={2**70}", "train.seed"),
                                           (f"seed={2**70}", "seed"), ("generate.samples=100000000", "generate.samples")])
def test_numbers_no_library_can_take_are_refused_at_start_up(override, key, tmp_path):
    with pytest.raises(ConfigError, match=key):
        cli.check_inputs(fake_settings(tmp_path / "run", override), "run")
    assert not (tmp_path / "run").exists()
