"""bench/scheduler.py's data-parallel comparison at toy size (4 replicas of 16 slots, 24 instructions): the hash
sharding arm runs the real ranks code, the balanced arm one stream over the replicas; both must log the same
records (scheduling changes when records are made, never which), and the balanced stream keeps the replicas
busier with one engine start instead of one per rank and stage."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_scheduler", REPO / "bench" / "scheduler.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_balanced_replicas_beat_hash_sharding_with_the_same_records(monkeypatch):
    bench = load_bench()
    monkeypatch.setattr(bench, "SLOTS", 16)
    hashed = bench.dp_round(24, 4, "hash", 0.1)
    balanced = bench.dp_round(24, 4, "balanced", 0.1)
    assert hashed["digest"] == balanced["digest"]  # the same stage logs, as sets of records
    assert hashed["starts"] == 8 and balanced["starts"] == 1  # 4 ranks x 2 sharded stages vs one engine
    assert 0 < hashed["utilization"] < balanced["utilization"] <= 1
    assert balanced["sim_hours"] < hashed["sim_hours"]
    assert hashed["tokens"] > 0 and balanced["completions"] >= hashed["completions"] * 0.9


def test_replicas_balance_requests_and_keep_their_own_clocks(monkeypatch):
    """The Replicas latency model alone: two replicas of 4 slots serve 8 equal requests in the time one
    replica needs for 4 (each has its own step clock), and a ninth waits for a free slot."""
    from selflengthen.engines.base import Request, RequestQueue, SamplingParams

    bench = load_bench()
    monkeypatch.setattr(bench, "SLOTS", 4)

    class Fixed(bench.Replicas):
        def _one(self, r):
            return "word " * 10

        def tokens(self, request, text):
            return 100

    params = SamplingParams(max_new_tokens=200, seed=1)
    one = Fixed(1)
    list(one.stream(RequestQueue([Request.chat(f"r{i}", [("user", "x")], params) for i in range(4)])))
    two = Fixed(2)
    list(two.stream(RequestQueue([Request.chat(f"r{i}", [("user", "x")], params) for i in range(8)])))
    assert two.seconds == one.seconds == 100 * (bench.STEP_S + bench.TOKEN_S * 4)
    assert two.sim.tokens == 800 and two.sim.peak == 8
    three = Fixed(2)
    list(three.stream(RequestQueue([Request.chat(f"r{i}", [("user", "x")], params) for i in range(9)])))
    assert three.seconds > two.seconds  # the ninth request waited for a slot
