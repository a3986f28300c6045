"""Data-parallel generation, in-process parts (selflengthen/engines/ranks.py): which rank owns an item, how a rank
keeps its own chains, and the engine keys that configure ranks. The multi-process runs are in tests/dist/."""

from __future__ import annotations

from collections import Counter

import pytest

from selflengthen.engines import ranks
from selflengthen.support.checks import ConfigError
from selflengthen.engines import make_engine, parse_config
from selflengthen.engines.base import Request, SamplingParams


def test_owner_is_a_stable_hash_not_pythons():
    # sha256, so every process, machine and rerun agrees (Python's hash() of a str changes per process)
    assert [ranks.owner(f"r001-i{n:05d}.s0", 2) for n in range(6)] == \
        [ranks.owner(f"r001-i{n:05d}.s0", 2) for n in range(6)]
    assert ranks.owner("abc", 1) == 0
    spread = Counter(ranks.owner(f"item-{n}", 4) for n in range(4000))
    assert set(spread) == {0, 1, 2, 3} and min(spread.values()) > 900  # balanced within a few percent


def _chain(item: str):
    c = yield Request.chat(item, [("user", item)], SamplingParams(max_new_tokens=4, seed=1))
    yield [{"id": f"{item}#0", "item": item, "text": c.text}]


def test_each_rank_keeps_exactly_its_own_chains_and_replays_their_first_request(monkeypatch):
    items = [f"i{n}" for n in range(20)]
    seen = []
    for r in range(3):
        monkeypatch.setattr(ranks, "_WORKER", ranks.Rank(r, 3))
        for chain in ranks.share(None, None, (_chain(i) for i in items)):
            first = chain.send(None)
            assert isinstance(first, Request) and ranks.owner(first.id, 3) == r
            seen.append(first.id)
    assert sorted(seen) == sorted(items)  # no item lost, none twice


def test_outside_a_stage_or_with_one_rank_nothing_changes():
    chains = [_chain("a")]
    assert ranks.share(None, None, chains) is chains


def test_rank_keys_are_checked_and_never_reach_the_engine():
    cfg = parse_config({"name": "fake", "data_parallel_size": 2, "rank_launcher": "srun", "gpus_per_rank": 0})
    assert cfg["data_parallel_size"] == 2 and cfg["rank_launcher"] == "srun"
    engine = make_engine(cfg, "fake-model")
    assert not hasattr(engine, "data_parallel_size")
    with pytest.raises(ConfigError, match="engine.data_parallel_size"):
        parse_config({"name": "fake", "data_parallel_size": 0})
    with pytest.raises(ConfigError, match="engine.rank_launcher"):
        parse_config({"name": "fake", "rank_launcher": "ssh"})


def test_gpus_are_split_between_local_ranks(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    cfg = {"name": "vllm", "tensor_parallel_size": 2}
    assert ranks.gpus_per_rank(cfg) == 2
    assert [ranks._env(r, 2, 2, cfg)["CUDA_VISIBLE_DEVICES"] for r in (0, 1)] == ["4,5", "6,7"]


def test_vllm_runs_its_replicas_itself_and_other_engines_use_ranks():
    from types import SimpleNamespace

    from selflengthen.engines import engine_data_parallel

    vllm = parse_config({"name": "vllm", "data_parallel_size": 4})
    assert vllm["data_parallel_backend"] == "mp" and engine_data_parallel(vllm)
    assert ranks.world_size(SimpleNamespace(s=SimpleNamespace(engine=vllm))) == 1  # one engine handle, one stream
    engine = make_engine(vllm, "model")
    assert engine.data_parallel_size == 4 and engine.data_parallel_backend == "mp"
    ray = parse_config({"name": "vllm", "data_parallel_size": 2, "data_parallel_backend": "ray"})
    assert make_engine(ray, "model").data_parallel_backend == "ray"
    # vLLM with our ranks instead (e.g. one Slurm step per rank): the engine itself sees one replica
    by_rank = parse_config({"name": "vllm", "data_parallel_size": 2, "data_parallel_backend": "ranks"})
    assert not engine_data_parallel(by_rank) and make_engine(by_rank, "model").data_parallel_size == 1
    assert ranks.world_size(SimpleNamespace(s=SimpleNamespace(engine=by_rank))) == 2
    fake = parse_config({"name": "fake", "data_parallel_size": 2})
    assert fake["data_parallel_backend"] == "ranks"
    assert ranks.world_size(SimpleNamespace(s=SimpleNamespace(engine=fake))) == 2
    with pytest.raises(ConfigError, match="engine.data_parallel_backend"):
        parse_config({"name": "transformers", "data_parallel_size": 2, "data_parallel_backend": "mp"})
    with pytest.raises(ConfigError, match="engine.data_parallel_backend"):
        parse_config({"name": "vllm", "data_parallel_backend": "nccl"})
