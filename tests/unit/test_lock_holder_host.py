"""A refused second process is told who holds the run: the holder's pid *and* host (a run folder on a shared
disk may be locked from another machine, where the pid alone would point at the wrong process)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from selflengthen.runfolder.store import RunLock, RunLocked


def test_the_refusal_names_the_holders_pid_and_host(tmp_path):
    with RunLock(tmp_path):
        held = json.loads((tmp_path / "lock").read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(RunLocked) as err:  # a second open file description: flock refuses it too
            RunLock(tmp_path).acquire()
    assert f"pid {os.getpid()} on {socket.gethostname()} since " in str(err.value)


def test_a_holder_on_another_host_is_named_by_that_host(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node-17.cluster")
    with RunLock(tmp_path):
        monkeypatch.setattr(socket, "gethostname", lambda: "login-2")
        with pytest.raises(RunLocked) as err:
            RunLock(tmp_path).acquire()
    assert "on node-17.cluster since" in str(err.value) and "login-2" not in str(err.value)
