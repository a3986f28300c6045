"""Hostile run folders: no write through a link, no lock contents echoed, bad run names, disk errors.

Each case plants something in a run folder the way a careless (or hostile) user could, then checks that the
store refuses with a clear message before it writes anything, and that whatever the link points to keeps
its exact bytes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal

import pytest

from selflengthen.runfolder import store
from selflengthen.runfolder.store import ItemLog, LinkRefused, RunLock, RunLocked, StoreError

SECRET = b"TOP-SECRET-LINE-1\nssh-rsa AAAA secret key material\n{\"id\": \"torn"


@pytest.fixture
def outside(tmp_path):
    """A file outside the run folder that the run must never change."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    return path


@pytest.fixture
def guarded(run):
    store.guard_run_folder(run)
    yield run
    store.unguard_run_folder(run)


def assert_refused_link(err, link) -> None:
    msg = str(err.value)
    assert str(link) in msg and "link" in msg and "rm " in msg and "nothing was written" in msg
    assert "TOP-SECRET" not in msg and "ssh-rsa" not in msg


# --- the lock ---------------------------------------------------------------------------------------------

def test_lock_that_is_a_symlink_is_refused_and_its_target_untouched(run, outside, caplog):
    (run / "lock").symlink_to(outside)
    with pytest.raises(LinkRefused) as err:
        RunLock(run).acquire()
    assert_refused_link(err, run / "lock")
    assert outside.read_bytes() == SECRET
    assert "TOP-SECRET" not in caplog.text
    assert not store._RUN_FOLDERS  # a refused lock does not leave the folder guarded


def test_lock_that_is_a_hard_link_is_refused_and_its_target_untouched(run, outside):
    os.link(outside, run / "lock")
    with pytest.raises(StoreError) as err:
        RunLock(run).acquire()
    assert "hard links" in str(err.value) and "TOP-SECRET" not in str(err.value)
    assert outside.read_bytes() == SECRET


def test_held_lock_never_echoes_its_contents(run):
    fd = os.open(run / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file holds it, as another process would
        os.write(fd, SECRET)
        with pytest.raises(RunLocked) as err:
            RunLock(run).acquire()
        assert "unknown process" in str(err.value) and "TOP-SECRET" not in str(err.value)
    finally:
        os.close(fd)


def test_stale_lock_contents_are_not_logged(run, caplog):
    (run / "lock").write_bytes(SECRET)
    with caplog.at_level(logging.INFO), RunLock(run):
        assert "stale" in caplog.text and "unknown process" in caplog.text
    assert "TOP-SECRET" not in caplog.text and "ssh-rsa" not in caplog.text


def test_holder_fields_are_shown_only_when_plain(run, caplog):
    (run / "lock").write_text(json.dumps({"pid": 7, "host": "[red]x\nSECRET", "since": "2020-01-01 00:00:00"}))
    with RunLock(run):
        pass
    assert "SECRET" not in caplog.text and "unknown process" in caplog.text


def test_holding_the_lock_guards_the_run_folder(run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "round_001").symlink_to(elsewhere)
    with RunLock(run):
        with pytest.raises(LinkRefused):
            store.atomic_write_json(run / "round_001" / "summary.json", {"v": 1})
    assert list(elsewhere.iterdir()) == []
    assert not store._RUN_FOLDERS  # released: no longer guarded


# --- item logs --------------------------------------------------------------------------------------------

def test_item_log_that_is_a_symlink_is_refused_and_its_target_untouched(run, outside):
    path = run / "attempts.jsonl"
    path.symlink_to(outside)
    with pytest.raises(LinkRefused) as err:
        store.open_log(path)  # the outside file ends in a torn line: it must not be cut off
    assert_refused_link(err, path)
    assert outside.read_bytes() == SECRET


def test_item_log_replaced_by_a_symlink_after_opening_is_not_appended_to(run, outside):
    path = run / "attempts.jsonl"
    log = ItemLog(path)
    log.append([{"id": "a"}])
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(LinkRefused):
        log.append([{"id": "b"}])
    assert outside.read_bytes() == SECRET


def test_item_log_with_a_hard_link_is_refused(run, outside):
    outside.write_text('{"id": "x"}\n{"id": "torn')
    before = outside.read_bytes()
    os.link(outside, run / "attempts.jsonl")
    with pytest.raises(StoreError, match="hard links"):
        ItemLog(run / "attempts.jsonl")
    assert outside.read_bytes() == before


def test_item_log_that_is_a_fifo_is_refused_without_hanging(run):
    os.mkfifo(run / "attempts.jsonl")

    def hung(*_):
        raise TimeoutError("reading the item log blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.raises(StoreError, match="not a regular file"):
            ItemLog(run / "attempts.jsonl")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- atomic writes ----------------------------------------------------------------------------------------

def test_atomic_write_onto_a_symlink_is_refused_and_its_target_untouched(run, outside):
    target = run / "summary.json"
    target.symlink_to(outside)
    with pytest.raises(LinkRefused) as err:
        store.atomic_write_json(target, {"v": 1})
    assert_refused_link(err, target)
    assert outside.read_bytes() == SECRET
    assert target.is_symlink() and sorted(p.name for p in run.iterdir()) == ["summary.json"]  # no temp left


def test_linked_stage_folder_inside_a_run_is_refused(guarded, tmp_path, outside):
    stage = guarded / "round_001" / "03_extend"
    stage.parent.mkdir()
    stage.symlink_to(outside.parent)
    for write in (lambda: store.atomic_write_jsonl(stage / "extended.jsonl", [{"id": 1}]),
                  lambda: ItemLog(stage / "attempts.jsonl").append([{"id": 1}]),
                  lambda: store.mark_done(stage, []),
                  lambda: store.stage_done(stage),
                  lambda: store.reset_dir(stage / "adapter"),
                  lambda: store.reset_dir(stage)):
        with pytest.raises(LinkRefused) as err:
            write()
        assert str(stage) in str(err.value)
    assert sorted(p.name for p in outside.parent.iterdir()) == ["precious.txt"]
    assert outside.read_bytes() == SECRET


def test_dotdot_through_a_linked_folder_is_refused(guarded, tmp_path):
    deep = tmp_path / "elsewhere" / "deep"
    deep.mkdir(parents=True)
    (guarded / "a").symlink_to(deep)
    with pytest.raises(LinkRefused):  # lexically run/x, but the kernel goes elsewhere/x
        store.atomic_write_json(guarded / "a" / ".." / "x.json", {"v": 1})
    assert not (tmp_path / "elsewhere" / "x.json").exists()


def test_reset_dir_never_deletes_through_a_linked_folder(guarded, tmp_path):
    keep = tmp_path / "keep"
    (keep / "adapter").mkdir(parents=True)
    (keep / "adapter" / "weights.bin").write_bytes(b"w")
    (guarded / "05_train").symlink_to(keep)
    with pytest.raises(LinkRefused):
        store.reset_dir(guarded / "05_train" / "adapter")
    assert (keep / "adapter" / "weights.bin").read_bytes() == b"w"


def test_the_run_folder_itself_may_be_a_link(tmp_path):
    """Putting a run on another disk with a link is the user's choice, like run.root: it is allowed."""
    disk = tmp_path / "bigdisk"
    disk.mkdir()
    (tmp_path / "run").symlink_to(disk)
    with RunLock(tmp_path / "run"):
        store.atomic_write_json(tmp_path / "run" / "round_001" / "summary.json", {"v": 1})
        ItemLog(tmp_path / "run" / "round_001" / "log.jsonl").append([{"id": "a"}])
    assert json.loads((disk / "round_001" / "summary.json").read_text()) == {"v": 1}


def test_folders_outside_any_run_may_be_links(tmp_path):
    """Outside a guarded run folder only the file itself must not be a link (exports, caches, reports)."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    store.atomic_write_json(tmp_path / "via" / "a.json", {"v": 1})
    assert json.loads((real / "a.json").read_text()) == {"v": 1}


# --- run names --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "/abs/path", "a/b", "a\\b", ".", "..", "", "  ", "~", "~user",
                                  "x\x00y", "new\nline", "x" * 256])
def test_bad_run_names_are_refused(name):
    with pytest.raises(StoreError) as err:
        store.check_run_name(name)
    msg = str(err.value)
    assert "run.name=" in msg and "plain folder name" in msg and "run.root" in msg


@pytest.mark.parametrize("name", ["my_run", "fake", "exp-1.2", "运行", "a b", ".hidden", "x" * 255])
def test_plain_run_names_pass(name):
    store.check_run_name(name)


def test_run_root_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    for bad in ("", str(tmp_path / "file"), "a\x00b"):
        with pytest.raises(StoreError, match="run.root="):
            store.check_run_root(bad)
    store.check_run_root(str(tmp_path / "missing"))  # made when needed
    store.check_run_root(str(tmp_path))


# --- disk errors ------------------------------------------------------------------------------------------

def _failing(code: int, after: int = 0):
    """An os.write that writes `after` bytes of the first call, then fails with `code`."""
    real = os.write
    state = {"calls": 0}

    def write(fd, data):
        state["calls"] += 1
        if state["calls"] == 1 and after:
            return real(fd, bytes(data[:after]))
        raise OSError(code, os.strerror(code))
    return write


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk is full"), (errno.EIO, "input/output error"),
                                         (errno.EROFS, "read-only")])
def test_disk_error_mid_atomic_write_keeps_the_old_file(tmp_path, monkeypatch, code, words):
    target = tmp_path / "a.json"
    store.atomic_write_json(target, {"v": 1, "pad": "x" * 100})
    before = target.read_bytes()
    monkeypatch.setattr(os, "write", _failing(code, after=10))
    with pytest.raises(StoreError) as err:
        store.atomic_write_json(target, {"v": 2, "pad": "y" * 100})
    monkeypatch.undo()
    msg = str(err.value)
    assert words in msg and str(target) in msg and "Nothing finished was lost" in msg and "run the same" in msg
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_disk_full_mid_append_keeps_the_log(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    ItemLog(path).append([{"id": "a"}])
    before = path.read_bytes()
    log = ItemLog(path)
    monkeypatch.setattr(os, "write", _failing(errno.ENOSPC, after=5))  # half a record reaches the disk
    with pytest.raises(StoreError, match="disk is full"):
        log.append([{"id": "b", "text": "long enough to be cut"}])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [r["id"] for r in ItemLog(path).records] == ["a"]


def test_temp_files_of_a_killed_writer_are_cleared(tmp_path):
    dead = tmp_path / ".done.json.tmp-999999999-abcd"  # no such pid: its writer was killed mid-write
    dead.write_text("half")
    live = tmp_path / f".done.json.tmp-{os.getpid()}-ef01"  # a live writer's file is left alone
    live.write_text("busy")
    store.atomic_write_json(tmp_path / "done.json", {"v": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["done.json", live.name])
