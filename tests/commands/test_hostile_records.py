"""Hostile run folders: every record the run reads back is damaged in every way a file can be, and every
command that reads it (run, eval, collect, report; experiment=fake) is run against it.

For each record type (manifest, round summary, a stage's done record, a training's done record and metrics, an
item log, an eval file, the export's done record, the collection's source record) and each damage (a JSON list, null,
a field of the wrong type, an empty file, a folder, a FIFO, a link to a FIFO outside the run, a file where the
record's folder belongs), the command must, within a time limit (a FIFO must never block):
- end with a user error (one paragraph naming the file) or go on after a warning naming the file — never
  another exception (a traceback);
- write nothing outside the run folder (the link target's folder is compared before and after).
The commands are called in-process the way `cli.main` calls them (check_inputs, the job, user errors caught)
to keep this fast; test_hostile_cli.py runs the real command lines.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import fake_engine, finished_run

from selflengthen import cli, recipe
from selflengthen.commands import collect as collect_cmd
from selflengthen.commands import report as report_cmd
from selflengthen.evidence import dataset
from selflengthen.evidence import heldout
from selflengthen.evidence import tables
from selflengthen.commands import eval as eval_cmd
from selflengthen.runfolder.store import atomic_write_bytes

LIMIT_S = 30  # per command: far above what one takes here; a blocked open would hit it


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished one-round fake run with every record type on disk: manifest, round summary, stage and
    training done records, item logs, eval files, the collection and the export."""
    base = tmp_path_factory.mktemp("hostile")
    s = finished_run(base / "runs" / "pristine", "iterations=1", "eval.limit=2", "collect.num_new=2")
    heldout.evaluate_run(s, fake_engine())
    dataset.collect(s, s.collect, fake_engine())
    for rel in RECORDS:
        assert (s.run_dir / rel).is_file(), rel
    return s


RECORDS = {  # record -> (commands that read it, a field to give the wrong type)
    "manifest.json": (("run", "eval", "collect"), ("semantic", "x")),
    "round_001/summary.json": (("run", "eval", "collect", "report"), ("adapters_out", [])),
    "round_001/initial/done.json": (("run", "eval", "collect", "report"), ("files", "x")),
    "round_001/train/generator/done.json": (("run", "eval", "collect", "report"), ("summary", 5)),
    "round_001/initial/attempts.jsonl": (("run",), ("ok", "yes")),
    "round_001/train/generator/metrics.json": (("run",), ("adapter_sha256", 7)),
    "eval/round_001.json": (("eval", "report"), ("rows", {})),
    "export/done.json": (("collect", "report"), ("summary", {"rows": "many"})),
    "collect/source.json": (("collect",), None),
}
# the wrong JSON shape (a list for some records, null for the others), a field of the wrong type, an emptied
# file (the manifest), and the wrong kind of file
DAMAGES = ("shape", "type", "empty", "folder", "fifo", "link_out", "parent_file")


def damage(path: Path, how: str, field, outside: Path) -> Path:
    """Damage the record at `path`; returns the path a message must name."""
    log = path.suffix == ".jsonl"
    if how == "shape":
        how = "list" if len(str(path)) % 2 else "null"
    if how in ("list", "null", "empty", "type") and log:
        lines = path.read_text().splitlines()
        if how == "type":
            rec = json.loads(lines[0])
            rec[field[0]] = field[1]
            lines[0] = json.dumps(rec)
        else:
            lines[0] = {"list": "[]", "null": "null", "empty": "{}"}[how]
        path.write_text("\n".join(lines) + "\n")
        return path
    if how == "list":
        path.write_text("[1, 2]")
    elif how == "null":
        path.write_text("null")
    elif how == "empty":
        path.write_text("")
    elif how == "type":
        doc = json.loads(path.read_text())
        key, value = field
        doc[key] = value
        path.write_text(json.dumps(doc))
    elif how == "folder":
        path.unlink()
        path.mkdir()
        (path / "inside").write_text("x")
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif how == "link_out":
        path.unlink()
        path.symlink_to(outside / "fifo")
    elif how == "parent_file":
        shutil.rmtree(path.parent)
        path.parent.write_text("a file where a folder belongs\n")
        return path.parent
    return path


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@contextmanager
def time_limit(seconds: int, what: str):
    def hang(*_):
        raise TimeoutError(f"{what} did not finish within {seconds} s (blocked on a FIFO?)")
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def command(name: str, s) -> None:
    """One command as cli.main runs it after the config checks: check_inputs, then the job."""
    cli.check_inputs(s, name)
    if name == "run":
        recipe.run(s, fake_engine(), lambda: "fake-model")
    elif name == "eval":
        eval_cmd.run_eval(s)
    elif name == "collect":
        collect_cmd.run_collect(s, s.collect)
    elif name == "report":
        report_cmd.run_report(s)


def attempt(name: str, s, caplog) -> str | None:
    """The user error of `command(name, s)` (a paragraph), or None when it went on; anything else fails."""
    caplog.clear()
    with time_limit(LIMIT_S, f"{name} on {s.run_dir}"):
        try:
            command(name, s)
        except cli.user_errors() as exc:
            return str(exc)
        except OSError as exc:  # cli.main turns these into a paragraph naming exc.filename
            return cli.os_error(exc)
    return None


@pytest.mark.parametrize("record", list(RECORDS))
def test_every_command_survives_every_damage_of(record, pristine, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.WARNING)
    # the report's figures are built from the records as always, but not rendered to PNG (seconds each here;
    # the drawing is tested in test_report.py): the bytes still go through the same checked, locked write
    monkeypatch.setattr(tables, "_save", lambda fig, path: (atomic_write_bytes(path, b"PNG"), path)[1])
    commands, field = RECORDS[record]
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(outside / "fifo")
    (outside / "keep.json").write_text("{}")
    before = snapshot(outside)
    failures = []
    for how in DAMAGES:
        if how == "type" and field is None or how == "parent_file" and "/" not in record or \
                how == "empty" and record != "manifest.json":
            continue
        for name in commands:
            run_dir = tmp_path / "runs" / f"{how}-{name}"
            shutil.copytree(pristine.run_dir, run_dir, symlinks=True)
            if record.endswith((".jsonl", "metrics.json")):  # read again when the stage is not done
                (run_dir / record).parent.joinpath("done.json").unlink()
                (run_dir / "round_001" / "summary.json").unlink()
            named = damage(run_dir / record, how, field, outside)
            s = replace(pristine, run_dir=run_dir)
            error = attempt(name, s, caplog)
            said = caplog.text + (error or "")  # a refusal may point at the warning above it
            # refused with a paragraph naming the file, or went on after a warning naming it
            if str(named) not in said:
                failures.append(f"{how} / {name}: the message does not name {named}: {said[-600:]!r}")
            if error is not None and "Fix" not in error and "fix" not in error:
                failures.append(f"{how} / {name}: no fix in {error!r}")
            assert snapshot(outside) == before, f"{how} / {name} wrote outside the run folder"
            shutil.rmtree(run_dir, ignore_errors=True)
    assert not failures, "\n".join(failures)


def test_records_name_the_run_files_as_layout_does():
    from selflengthen.runfolder import layout
    from selflengthen.runfolder import records

    names = ("MANIFEST", "SUMMARY", "EVAL_DIR", "REPORT_DIR", "EXPORT_DIR", "COLLECT_DIR")
    assert [getattr(records, n) for n in names] == [getattr(layout, n) for n in names]
