"""Ray-placed generation ranks (`engine.rank_launcher=ray`): on a local Ray cluster started here (ray.init with
2 CPUs), a round of experiment=fake with two ranks, each a Ray task, writes the artifacts one process writes."""

from __future__ import annotations

import pytest

from test_ranks_fake import check_shards_disjoint, run
from conftest import tree
from selflengthen.engines import ranks

pytestmark = pytest.mark.dist


def test_two_ray_ranks_write_the_artifacts_of_one(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    merged = check_shards_disjoint(monkeypatch)
    launched = []
    launch = ranks.LAUNCHERS["ray"]

    def recorded(cmd, env, rank, gpus, out):
        handle = launch(cmd, env, rank, gpus, out)
        launched.append(handle)
        return handle

    monkeypatch.setitem(ranks.LAUNCHERS, "ray", recorded)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run(tmp_path / "one")
        run(tmp_path / "two", "engine.data_parallel_size=2", "engine.rank_launcher=ray")
        nodes = [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
    assert tree(tmp_path / "two") == tree(tmp_path / "one")
    # every rank of both sharded stages ran as a Ray task of this cluster, and finished cleanly
    assert len(launched) == 4 and all(isinstance(h, ranks.RayRank) and h.returncode == 0 for h in launched)
    assert {(stage, rank) for stage, rank, n in merged if n} == {(s, r) for s in ("initial", "extend") for r in (0, 1)}
    assert len(nodes) == 1 and nodes[0]["Resources"]["CPU"] == 2
