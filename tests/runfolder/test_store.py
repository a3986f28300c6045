"""The durable store: atomic writes, item logs, done records, the run lock, disk errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from selflengthen.runfolder import store
from selflengthen.runfolder.store import ItemLog, RunLock, RunLocked, StoreError


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    store.atomic_write_json(target, {"v": 1})

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreError) as err:
        store.atomic_write_json(target, {"v": 2})
    assert "disk is full" in str(err.value) and "run the same command again" in str(err.value)
    assert json.loads(target.read_text()) == {"v": 1}  # the old artifact is intact
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_item_log_append_is_deduplicated_and_reloads(tmp_path):
    path = tmp_path / "log.jsonl"
    log = ItemLog(path)
    log.append([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    log.append([{"id": "a", "v": 9}, {"id": "c", "v": 3}])
    again = ItemLog(path)
    assert [r["id"] for r in again.records] == ["a", "b", "c"]
    assert again.by_id["a"]["v"] == 1


def test_item_log_cuts_a_torn_tail(tmp_path):
    path = tmp_path / "log.jsonl"
    ItemLog(path).append([{"id": "a"}, {"id": "b"}])
    with open(path, "a") as f:
        f.write('{"id": "c", "te')
    log = ItemLog(path)
    assert [r["id"] for r in log.records] == ["a", "b"]
    assert path.read_text().endswith("}\n")
    log.append([{"id": "c"}])
    assert [r["id"] for r in ItemLog(path).records] == ["a", "b", "c"]


def test_damaged_middle_of_log_is_set_aside(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": "a"}\nGARBAGE\n{"id": "b"}\n')
    log = store.open_log(path)
    assert len(log) == 0
    assert (tmp_path / "log.jsonl.corrupt").exists()


def test_item_log_disk_full_keeps_previous_records(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    log = ItemLog(path)
    log.append([{"id": "a"}])
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreError):
        log.append([{"id": "b"}])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert [r["id"] for r in ItemLog(path).records] == ["a"]


def test_done_record_detects_changed_artifact(tmp_path, caplog):
    (tmp_path / "out.jsonl").write_text('{"id": 1}\n')
    store.mark_done(tmp_path, ["out.jsonl"], summary={"n": 1})
    assert store.stage_done(tmp_path)["summary"] == {"n": 1}
    (tmp_path / "out.jsonl").write_text('{"id": 2}\n')
    assert store.stage_done(tmp_path) is None
    assert "redoing" in caplog.text
    assert not (tmp_path / "done.json").exists()


HOLD = """
import sys, time
from selflengthen.runfolder.store import RunLock
lock = RunLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(60)
"""


def test_live_lock_refuses_a_second_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked) as err:
            RunLock(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(err.value) and "run.name=" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and is taken over
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()  # our own small JSON
    lock.release()


def test_stale_lock_file_is_taken_over(tmp_path, caplog):
    (tmp_path / "lock").write_text('{"pid": 999999, "host": "somehost", "since": "2020-01-01 00:00:00"}')
    with RunLock(tmp_path):
        assert "stale" in caplog.text and "pid 999999 on somehost" in caplog.text
    assert (tmp_path / "lock").read_text() == ""


def test_unusable_run_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError) as err:
        RunLock(blocker / "run").acquire()
    assert "Cannot use the run folder" in str(err.value) and "run.root" in str(err.value)
