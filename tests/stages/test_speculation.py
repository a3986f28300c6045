"""Speculative attempts (stages.common.Attempts): idle slots of a continuous-batching engine run later
attempts of items still under way. The log must be the same record for record as without speculation, a
success must drop the attempts ahead of it, and the stage's end must come sooner."""

from __future__ import annotations

import json
import random

import pytest

from conftest import fake_settings
from selflengthen import recipe
from selflengthen.engines import session
from selflengthen.engines.base import Request, SamplingParams
from selflengthen.engines.fake import FakeEngine
from selflengthen.stages import extend
from selflengthen.stages.common import SPECULATION, Durability, RoundContext, derive_seed, redraws
from selflengthen.runfolder.store import open_log, read_jsonl


class Lognormal(FakeEngine):
    """The latency model with answers of very different lengths, a pure function of the request's seed;
    a third of them fail the judge below (they end with '!')."""

    def __init__(self, slots: int = 8):
        super().__init__("m", max_slots=slots)

    def _one(self, r):
        rng = random.Random(r.params.seed)
        self._n = min(4000, int(rng.lognormvariate(5.0, 1.0)) + 5)
        return f"answer {r.params.seed % 997} of {self._n} tokens" + ("!" if rng.random() < 0.34 else ".")

    def tokens(self, request, text):
        return int(text.split(" of ")[1].split()[0])


class Crash(Lognormal):
    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def stream(self, queue):
        for n, c in enumerate(super().stream(queue)):
            if n == self.after:
                raise RuntimeError("killed")
            yield c


def _redraw(tmp_path, name, engine, speculate, items=24, attempts=6):
    log = open_log(tmp_path / f"{name}.jsonl")
    work = {f"it{k:02d}": {} for k in range(items)}

    def request(i, _item, attempt):
        return Request.chat(i, [("user", f"write about {i}")], SamplingParams(max_new_tokens=5000, seed=derive_seed(i, attempt)))

    passed = redraws(log, work, request, lambda _i, text: (text.endswith("."), "" if text.endswith(".") else "bang"),
                     attempts, engine, Durability(every=3, seconds=60, speculate=speculate), lambda n: None)
    return log.path, passed


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_item(records):
    out: dict = {}
    for r in records:
        out.setdefault(r["item"], []).append(r)
    return out


def test_speculation_changes_no_record_and_ends_the_stage_sooner(tmp_path):
    plain_engine, spec_engine = Lognormal(), Lognormal()
    plain, passed_plain = _redraw(tmp_path, "plain", plain_engine, speculate=False)
    SPECULATION.clear()
    spec, passed_spec = _redraw(tmp_path, "spec", spec_engine, speculate=True)
    assert SPECULATION["started"] > 0 and SPECULATION["used"] > 0  # it did run attempts ahead, and used some
    # per item the same records in the same order (items interleave differently on the stream)
    assert _by_item(_records(spec)) == _by_item(_records(plain))
    assert passed_spec == passed_plain
    # nothing after an item's first success, no attempt twice
    for recs in _by_item(_records(spec)).values():
        assert [r["attempt"] for r in recs] == list(range(len(recs)))
        assert all(not r["ok"] for r in recs[:-1])
    # the idle slots did useful work: fewer decode steps for the same records
    assert spec_engine.sim.steps < plain_engine.sim.steps


def test_a_crash_with_attempts_ahead_resumes_to_the_same_log(tmp_path):
    reference, _ = _redraw(tmp_path, "ref", Lognormal(), speculate=False)
    with pytest.raises(RuntimeError, match="killed"):
        _redraw(tmp_path, "cut", Crash(after=30), speculate=True)
    cut = _records(tmp_path / "cut.jsonl")
    # what reached the log before the crash is a prefix of each item's records: no held-back record leaked
    ref = _by_item(_records(reference))
    for item, recs in _by_item(cut).items():
        assert recs == ref[item][: len(recs)]
    _redraw(tmp_path, "cut", Lognormal(), speculate=True)  # the rerun continues every item from its last record
    assert _by_item(_records(tmp_path / "cut.jsonl")) == ref


def test_extension_with_speculation_writes_the_same_artifacts(tmp_path):
    def extend_with(folder, speculate):
        s = fake_settings(folder, "iterations=1", "extend.max_attempts=6", f"run.speculate={speculate}")
        recipe.run(s, session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")
        (folder / "round_001/extend/done.json").unlink()
        (folder / "round_001/extend/passes.jsonl").unlink()
        engine = FakeEngine("m", max_slots=16)
        return extend.run(RoundContext(s, 1, engine, {"generator": None, "extender": None})), engine

    SPECULATION.clear()
    (a, plain), (b, spec) = extend_with(tmp_path / "a", False), extend_with(tmp_path / "b", True)
    assert SPECULATION["started"] > 0
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert read_jsonl(tmp_path / "a/round_001/extend/extended.jsonl") == \
        read_jsonl(tmp_path / "b/round_001/extend/extended.jsonl")
    assert _by_item(read_jsonl(tmp_path / "a/round_001/extend/passes.jsonl")) == \
        _by_item(read_jsonl(tmp_path / "b/round_001/extend/passes.jsonl"))
    assert spec.sim.steps <= plain.sim.steps


def test_asking_for_capacity_never_loads_a_model(tmp_path):
    """A resumed stage with nothing left to generate must not load the engine just to learn its capacity;
    once the engine is loaded (a completion came back) its capacity is used."""
    from selflengthen.engines import session
    from selflengthen.stages.common import run_chains

    lazy = session.LazyEngine({"name": "fake", "max_slots": 8}, lambda: "m")
    assert lazy.capacity is None and lazy.inner is None
    run_chains(lazy, open_log(tmp_path / "none.jsonl"), [], Durability(speculate=True))
    assert lazy.inner is None  # nothing to do: never loaded
    SPECULATION.clear()
    _redraw(tmp_path, "lazy", lazy, speculate=True)
    assert lazy.inner is not None and lazy.capacity == 8 and SPECULATION["started"] > 0


def test_spare_slots_go_one_more_per_item_round_after_round(tmp_path):
    """Slots freed one at a time spread over the items under way (the fewest attempts ahead first, ties: the
    item started first) instead of running the first item's attempts all ahead before the next gets any —
    which left the items started late to re-draw one attempt at a time at the stage's end."""
    from selflengthen.stages.common import Attempts, Scheduler, _Driver

    def attempts(item):
        def make(k):
            def chain():
                yield Request.chat(item, [("user", item)], SamplingParams(max_new_tokens=5, seed=k))
                return True
            return chain()
        return Attempts(item, 0, 5, make)

    driver = _Driver(Scheduler(FakeEngine("m", max_slots=64)), None, None)
    items = [driver.start(attempts(f"it{i}")) for i in range(3)]

    def ahead():
        return [len(it.runs) - 1 for it in items]

    assert [driver.spare(1) for _ in range(4)] == [1, 1, 1, 1]
    assert ahead() == [2, 1, 1]  # one each, then the first started gets the next
    assert driver.spare(2, depth=2) == 2 and ahead() == [2, 2, 2]  # no item more than 2 ahead of its live one
    assert driver.spare(100) == 6 and ahead() == [4, 4, 4]  # then every attempt left, up to max_attempts
    assert driver.spare(1) == 0


def test_an_item_with_longer_attempts_gets_more_of_them_ahead(tmp_path):
    """Weights (how long one attempt runs: the extension's source words): idle slots keep the attempts running
    in proportion to them, so the long items' chains, which the stage's end waits for, run ahead first, and
    the short items' attempts fill the tail."""
    from selflengthen.stages.common import Attempts, Scheduler, _Driver

    def attempts(item, weight):
        def make(k):
            def chain():
                yield Request.chat(item, [("user", item)], SamplingParams(max_new_tokens=5, seed=k))
                return True
            return chain()
        return Attempts(item, 0, 12, make, weight=weight)

    driver = _Driver(Scheduler(FakeEngine("m", max_slots=64)), None, None)
    short, long = driver.start(attempts("short", 100.0)), driver.start(attempts("long", 300.0))

    def running():
        return [len(short.runs), len(long.runs)]

    assert driver.spare(1) == 1 and running() == [1, 2]  # the long item first, though started second
    assert driver.spare(3) == 3 and running() == [1, 5]  # (5 + 1) / 300 = (1 + 1) / 100: the short one's turn
    assert driver.spare(4) == 4 and running() == [2, 8]  # (2 + 1) : (8 + 1) = 100 : 300, one slot at a time
    assert driver.spare(100) == 14 and running() == [12, 12]  # then every attempt left, up to max_attempts
