"""Data-parallel generation with the fake engine (selflengthen/engines/ranks.py): two ranks write the artifacts one
process writes, and a rank killed mid-stage is redone on rerun from its own shard, with no duplicate, no
lost item, and the other rank's finished work not run again."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import fake_engine, fake_settings
from faults import check_logs_clean
from conftest import tree
from selflengthen import recipe
from selflengthen.engines import ranks

pytestmark = pytest.mark.dist


def run(run_dir: Path, *overrides: str):
    return recipe.run(fake_settings(run_dir, "iterations=1", *overrides), fake_engine(), lambda: "fake-model")


def record_launches(monkeypatch) -> list[tuple[str, int]]:
    """(stage, rank) of every rank process started."""
    started = []
    local = ranks.LAUNCHERS["local"]

    def launcher(cmd, env, rank, gpus, out):
        started.append((Path(cmd[3]).parent.parent.name, rank))
        return local(cmd, env, rank, gpus, out)

    monkeypatch.setitem(ranks.LAUNCHERS, "local", launcher)
    return started


def check_shards_disjoint(monkeypatch) -> list:
    """Each shard merged holds only items its rank owns (sha256 of the item id mod 2)."""
    merged = []
    merge = ranks._merge

    def checked(shard, log_):
        rank = int(shard.parent.name.split("-")[1])
        items = {json.loads(line)["item"] for line in shard.read_text().splitlines()}
        assert {ranks.owner(i, 2) for i in items} <= {rank}, shard
        merged.append((shard.parent.parent.parent.name, rank, len(items)))
        return merge(shard, log_)

    monkeypatch.setattr(ranks, "_merge", checked)
    return merged


def test_two_ranks_write_the_artifacts_of_one(tmp_path, monkeypatch):
    started = record_launches(monkeypatch)
    merged = check_shards_disjoint(monkeypatch)
    run(tmp_path / "one")
    run(tmp_path / "two", "engine.data_parallel_size=2")
    assert tree(tmp_path / "two") == tree(tmp_path / "one")
    assert {(stage, rank) for stage, rank, n in merged if n} == {(s, r) for s in ("initial", "extend") for r in (0, 1)}
    assert sorted(started) == [("extend", 0), ("extend", 1), ("initial", 0), ("initial", 1)]
    assert not list((tmp_path / "two").rglob("ranks"))  # merged, then removed
    check_logs_clean(tmp_path / "two")


def _kill_rank_when_it_has_logged(shard: Path, stop: threading.Event, killed: list) -> None:
    """Kill rank 1 (its pid is in its lock) once its shard holds a record and it is not done."""
    while not stop.is_set():
        try:
            if shard.exists() and shard.read_text().count("\n") >= 1 and not (shard.parent / "done.json").exists():
                pid = json.loads((shard.parent / "lock").read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(shard.read_text().count("\n"))
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)


def test_a_killed_rank_is_redone_alone_from_its_shard(tmp_path, monkeypatch):
    slow = ("engine.delay=0.4", "run.checkpoint_every=1")
    run(tmp_path / "one", *slow)
    reference = tree(tmp_path / "one")

    job = tmp_path / "two"
    started = record_launches(monkeypatch)
    folder = job / "round_001" / "initial" / "ranks"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_rank_when_it_has_logged,
                              args=(folder / "rank-00001-of-00002" / "attempts.jsonl", stop, killed))
    killer.start()
    try:
        with pytest.raises(ranks.RankFailed, match="rank 1"):
            run(job, "engine.data_parallel_size=2", *slow)
    finally:
        stop.set()
        killer.join()
    assert killed, "rank 1 finished before it could be killed"
    # rank 0 finished and is marked; rank 1 left a partial shard and no marker
    assert (folder / "rank-00000-of-00002" / "done.json").exists()
    assert not (folder / "rank-00001-of-00002" / "done.json").exists()
    shard0 = (folder / "rank-00000-of-00002" / "attempts.jsonl").read_text()
    partial1 = (folder / "rank-00001-of-00002" / "attempts.jsonl").read_text().splitlines()
    assert partial1
    # each rank ran only the items whose id hashes to it
    assert {ranks.owner(json.loads(line)["item"], 2) for line in shard0.splitlines()} == {0}
    assert {ranks.owner(json.loads(line)["item"], 2) for line in partial1} == {1}

    started.clear()
    run(job, "engine.data_parallel_size=2", *slow)
    assert [r for stage, r in started if stage == "initial"] == [1]  # rank 0's finished items not redone
    assert tree(job) == reference  # nothing lost, nothing twice: the artifacts of one uninterrupted process
    merged = (job / "round_001" / "initial" / "attempts.jsonl").read_text().splitlines()
    assert set(shard0.splitlines()) | set(partial1) <= set(merged)  # what was logged was kept, not redrawn
    check_logs_clean(job)
