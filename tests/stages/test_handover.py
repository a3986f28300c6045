"""Extension started ahead of its stage (stages.common.Handover): while the initial stage's last answers are
still being generated, a continuous-batching engine's idle slots start the extension of answers that already
passed; the extension stage then takes those items over on the same stream. The artifacts must be the ones
a run without it writes, a crash must lose nothing that was logged, and the work must really overlap."""

from __future__ import annotations

import pickle

import pytest

from conftest import fake_settings
from selflengthen import recipe
from selflengthen.engines import session
from selflengthen.engines.fake import FakeEngine
from selflengthen.stages.common import SPECULATION, Handover, RoundContext, Scheduler, derive_seed
from selflengthen.engines.base import Request, SamplingParams
from selflengthen.runfolder.store import read_jsonl

ARTIFACTS = ("initial/attempts.jsonl", "initial/responses.jsonl", "extend/passes.jsonl", "extend/extended.jsonl")
MORE = ("self_instruct.num_new=12", "extend.max_attempts=4")


def _engine(slots: int = 6):
    return session.LazyEngine({"name": "fake", "max_slots": slots}, lambda: "fake-model")


def _sets(run_dir):
    """Each artifact as a sorted list of its records (items interleave differently on the stream)."""
    import json

    return {name: sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(run_dir / "round_001" / name))
            for name in ARTIFACTS}


def test_extension_started_ahead_writes_the_same_artifacts(tmp_path):
    plain = fake_settings(tmp_path / "plain", "iterations=1", "run.speculate=false", *MORE)
    recipe.run(plain, _engine(), lambda: "fake-model")
    SPECULATION.clear()
    ahead = fake_settings(tmp_path / "ahead", "iterations=1", "run.speculate=true", *MORE)
    recipe.run(ahead, _engine(), lambda: "fake-model")
    # the extension really started before the initial stage ended, and the stage took those items over
    assert SPECULATION["handover_started"] > 0 and SPECULATION["handover_used"] > 0
    assert _sets(tmp_path / "ahead") == _sets(tmp_path / "plain")
    for name in ("extend/extended.jsonl", "initial/responses.jsonl"):  # these are written in item order
        assert read_jsonl(tmp_path / "ahead/round_001" / name) == read_jsonl(tmp_path / "plain/round_001" / name)


class _Crash(FakeEngine):
    """Dies at its n-th completion (counted over the whole process: both stages share one stream)."""

    def __init__(self, after: int):
        super().__init__("fake-model", max_slots=6)
        self.after, self.seen = after, 0

    def stream(self, queue):
        for c in super().stream(queue):
            self.seen += 1
            if self.seen == self.after:
                raise RuntimeError("killed")
            yield c


class _Order(FakeEngine):
    """Remembers the ids of its completions in the order the stream yields them."""

    def __init__(self):
        super().__init__("fake-model", max_slots=6)
        self.ids = []

    def stream(self, queue):
        for c in super().stream(queue):
            self.ids.append(c.id)
            yield c


def _crash_point(folder, when: str) -> int:
    """Where to kill this workload's round (its completions counted as _Crash counts them, found by running it
    once): just before the initial stage's last completion (extension items held in memory, started ahead),
    just after the extension stage took them over, or in the middle of the extension."""
    order, lazy = _Order(), _engine()
    lazy.inner = order
    recipe.run(fake_settings(folder, "iterations=1", "run.speculate=true", *MORE), lazy, lambda: "fake-model")
    last_initial = max(n for n, i in enumerate(order.ids, 1) if ".s" in i and ".e" not in i)
    return {"initial_tail": last_initial - 1, "takeover": last_initial + 3,
            "middle": (last_initial + len(order.ids)) // 2}[when]


@pytest.mark.parametrize("when", ["initial_tail", "takeover", "middle"])
def test_a_crash_with_extension_started_ahead_resumes_to_the_same_artifacts(tmp_path, when):
    after = _crash_point(tmp_path / "order", when)
    reference = fake_settings(tmp_path / "ref", "iterations=1", "run.speculate=false", *MORE)
    recipe.run(reference, _engine(), lambda: "fake-model")
    s = fake_settings(tmp_path / "cut", "iterations=1", "run.speculate=true", *MORE)
    crash = session.LazyEngine({"name": "fake"}, lambda: "fake-model")
    crash.inner = _Crash(after)
    SPECULATION.clear()
    with pytest.raises(RuntimeError, match="killed"):
        recipe.run(s, crash, lambda: "fake-model")
    assert SPECULATION["handover_started"] > 0  # the crash came with extension items started ahead
    if when == "initial_tail":  # ... while the initial stage was still running: nothing of them may be in the log
        assert not (tmp_path / "cut/round_001/initial/done.json").exists()
        assert not (tmp_path / "cut/round_001/extend/passes.jsonl").exists()
    passes = tmp_path / "cut/round_001/extend/passes.jsonl"
    ref = {r["id"]: r for r in read_jsonl(tmp_path / "ref/round_001/extend/passes.jsonl")}
    if passes.exists():  # whatever reached the extension log is what the reference logged for it
        assert all(ref[r["id"]] == r for r in read_jsonl(passes))
    recipe.run(s, _engine(), lambda: "fake-model")
    assert _sets(tmp_path / "cut") == _sets(tmp_path / "ref")


def test_an_item_made_from_another_source_is_not_taken_over(tmp_path):
    """The next stage takes an item started ahead only if it makes it from an equal row; otherwise the item
    is dropped (its request withdrawn) and the stage starts its own."""
    from selflengthen.stages.common import Attempts

    engine = FakeEngine("m", max_slots=4)

    def make(row):
        def chain(_k):
            c = yield Request.chat(row["id"], [("user", row["text"])], SamplingParams(max_new_tokens=50, seed=1))
            yield [{"id": row["id"], "text": c.text}]
            return True
        return [Attempts(row["id"], 0, 2, chain, source=row)]

    SPECULATION.clear()
    h = Handover(engine, make)
    h.offer({"id": "a", "text": "one"}, priority=3)
    h.offer({"id": "b", "text": "two"}, priority=5)
    assert h.spare(1) == 1  # the higher priority first
    assert h.take(make({"id": "a", "text": "one"})[0]) is None  # never started
    assert h.take(make({"id": "b", "text": "changed"})[0]) is None  # started from another row: dropped
    assert SPECULATION["handover_used"] == 0
    h.spare(1)
    assert h.take(make({"id": "a", "text": "one"})[0]) is not None
    assert SPECULATION["handover_used"] == 1
    h.close()
    assert not h.sched.queue


def test_rows_of_equal_priority_are_started_in_offer_order(tmp_path):
    started = []
    h = Handover(FakeEngine("m", max_slots=4), lambda row: started.append(row["id"]) or [])
    for i in range(5):  # equal priorities: the rows (dicts) must never be compared
        h.offer({"id": f"r{i}"}, priority=1)
        if i == 1:
            h.spare(1)
    h.spare(10)
    assert started == ["r0", "r1", "r2", "r3", "r4"]
    h.close()


def test_a_request_cancelled_in_flight_frees_its_slot_for_spare_work():
    """Idle slots are counted without the requests cancelled in flight (the engine dropped them), so the
    work started ahead refills them instead of leaving them empty."""
    engine = FakeEngine("m", max_slots=3)
    sched = Scheduler(engine)
    offered: list[int] = []

    def spare(n):
        offered.append(n)
        return 0

    sched.spares = [spare]
    done = []
    for i in range(3):
        sched.submit(Request.chat(f"r{i}", [("user", "x " * (5 + 40 * i))], SamplingParams(max_new_tokens=500,
                                                                                         seed=derive_seed(i))),
                     done.append)
    sched.cancel("r2")  # still queued: withdrawn at once
    sched.submit(Request.chat("r3", [("user", "y " * 200)], SamplingParams(max_new_tokens=500, seed=7)), done.append)
    sched.run(until=lambda: len(done) >= 1)  # r3 and r1 are in flight now
    sched.cancel("r3")
    offered.clear()
    sched.run()
    # after r1 finished with r3 cancelled in flight, all 3 slots were offered, not 3 - 1
    assert offered and max(offered) == 3
    assert [c.id for c in done] == ["r0", "r1"]


def test_a_round_context_pickles_without_its_handovers(tmp_path):
    s = fake_settings(tmp_path, "iterations=1")
    ctx = RoundContext(s, 1, FakeEngine("m", max_slots=2), {"generator": None})
    ctx.handover_out = Handover(ctx.engine, lambda row: [])
    copy = pickle.loads(pickle.dumps(ctx))
    assert copy.handover_out is None and copy.round_no == 1 and ctx.handover_out is not None


class _Sized(FakeEngine):
    """Answers of 400 words to the request named "long", of 5 to the others; a third of them end with '.'."""

    def _one(self, r):
        n = 400 if r.id == "long" else 5
        return " ".join(["word"] * n) + ("." if r.params.seed % 3 == 0 else "!")


def _rows_attempts(row):
    """An item started ahead: up to 6 attempts, each one request; it succeeds if its answer ends with '.'."""
    from selflengthen.stages.common import Attempts

    def make(k):
        def chain():
            c = yield Request.chat(row["id"], [("user", row["id"])],
                                   SamplingParams(max_new_tokens=500, seed=derive_seed(row["id"], k)))
            ok = c.text.endswith(".")
            yield [{"id": f"{row['id']}#{k}", "item": row["id"], "attempt": k, "ok": ok}]
            return ok
        return chain()
    return [Attempts(row["id"], 0, 6, make, source=row)]


def test_idle_slots_run_later_attempts_of_items_started_ahead(tmp_path):
    """Once the stage has nothing of its own to run ahead and every offered row is started, idle slots run
    later attempts of the next stage's items (records held); the next stage logs exactly what it logs when
    it runs them itself with nothing started ahead."""
    from selflengthen.stages.common import Attempts, Durability, run_chains
    from selflengthen.runfolder.store import open_log

    rows = [{"id": f"r{i}"} for i in range(3)]

    def own():  # the stage's last item: one long answer, nothing to run ahead
        def chain():
            yield Request.chat("long", [("user", "long")], SamplingParams(max_new_tokens=500, seed=3))
            return True
        return Attempts("long", 0, 1, lambda _k: chain())

    def next_stage(name, speculate):
        engine = _Sized("m", max_slots=8)
        h = Handover(engine, _rows_attempts) if speculate else None
        for row in rows if h else ():
            h.offer(row, priority=1)
        run_chains(engine, open_log(tmp_path / f"{name}-first.jsonl"), [own()], Durability(speculate=speculate),
                   ahead=h)
        log = open_log(tmp_path / f"{name}.jsonl")
        run_chains(engine, log, [a for row in rows for a in _rows_attempts(row)], Durability(speculate=speculate),
                   takes=h)
        if h:
            h.close()
        return sorted(log.records, key=lambda r: (r["item"], r["attempt"]))

    plain = next_stage("plain", speculate=False)
    SPECULATION.clear()
    ahead = next_stage("ahead", speculate=True)
    assert SPECULATION["handover_used"] == len(rows)
    assert SPECULATION["held_started"] > 0 and SPECULATION["used"] > 0  # ran ahead, and those records were used
    assert ahead == plain and any(not r["ok"] for r in plain)  # the same records, re-draws among them
