"""Two generation ranks with the real transformers engine on the tiny model write the artifacts one process
writes: every request is sampled from its own seed (the slot loop seeds each request alone), so which rank
and which batch a request lands in changes nothing."""

from __future__ import annotations

import time

import pytest

from conftest import fake_settings
from test_ranks_fake import check_shards_disjoint
from conftest import tree
from selflengthen import recipe
from selflengthen.engines import session

pytestmark = pytest.mark.dist


def run(run_dir, model, *overrides):
    s = fake_settings(run_dir, "iterations=1", "engine=transformers", f"model.path={model}", "engine.threads=1",
                      "engine.batch_size=4", "generate.max_new_tokens=24", "self_instruct.max_new_tokens=16",
                      "extend.max_new_tokens=24", *overrides)
    engine, resolve = session.for_settings(s)
    start = time.time()
    recipe.run(s, engine, resolve)
    return time.time() - start


def test_two_transformers_ranks_equal_one(tmp_path, tiny_model_dir, monkeypatch):
    merged = check_shards_disjoint(monkeypatch)
    one = run(tmp_path / "one", tiny_model_dir)
    two = run(tmp_path / "two", tiny_model_dir, "engine.data_parallel_size=2")
    print(f"one rank {one:.1f}s, two ranks {two:.1f}s")  # bench/README.md quotes these
    assert tree(tmp_path / "two") == tree(tmp_path / "one")
    drawn = (tmp_path / "two" / "round_001" / "initial" / "attempts.jsonl").read_text().splitlines()
    assert len(drawn) >= 8  # the sharded stage really generated (every sample, re-draws included)
    assert sorted(rank for stage, rank, n in merged if stage == "initial" and n) == [0, 1]
