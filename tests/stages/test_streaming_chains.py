"""Stages as item chains on one engine stream (DESIGN §6): a chain's next request is queued the moment its
completion is judged, records are made durable every N records or T seconds, and a kill mid-stage resumes
to the same artifacts."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAKE, REPO, fake_settings
from conftest import tree
from selflengthen import recipe
from selflengthen.engines import session
from selflengthen.engines.base import Request, SamplingParams
from selflengthen.engines.fake import FakeEngine
from selflengthen.stages import extend, self_instruct
from selflengthen.stages.common import Durability, Journal, RoundContext, redraws, run_chains
from selflengthen.runfolder.store import open_log, read_jsonl


class TimedEngine(FakeEngine):
    """The latency model, with one item's requests short and every other item's long, and a trace of the
    simulated step at which each request enters the engine and each completion leaves it."""

    def __init__(self, fast: str, slots: int = 64):
        super().__init__("m", max_slots=slots)
        self.fast, self.events = fast, []

    def tokens(self, request, text):
        return 5 if request.id == self.fast else 500

    def _finish(self, r):
        self.events.append(("in", r.id, "2" if r.assistant_prefix else "1", self.sim.steps))
        return super()._finish(r)

    def stream(self, queue):
        for c in super().stream(queue):
            self.events.append(("out", c.id, None, self.sim.steps))
            yield c


def _extend_ready(tmp_path, *overrides):
    s = fake_settings(tmp_path, "iterations=1", *overrides)
    recipe.run(s, session.LazyEngine({"name": "fake"}, lambda: "m"), lambda: "m")
    (tmp_path / "round_001/extend/done.json").unlink()
    (tmp_path / "round_001/extend/passes.jsonl").unlink()
    return s


def test_a_chain_goes_on_while_other_chains_are_still_generating(tmp_path):
    s = _extend_ready(tmp_path)
    items = sorted({r["id"] for r in read_jsonl(tmp_path / "round_001/initial/responses.jsonl")})
    fast = f"{items[0]}.e0"
    engine = TimedEngine(fast)
    extend.run(RoundContext(s, 1, engine, {"generator": None, "extender": None}))
    fast_stage2 = next(step for ev, i, stage, step in engine.events if ev == "in" and i == fast and stage == "2")
    slow_stage1_done = [step for ev, i, _, step in engine.events if ev == "out" and i != fast]
    # the fast item's stage 2 started while every slow item was still in its stage 1 (waves would wait for them)
    assert fast_stage2 < min(slow_stage1_done)
    assert [e for e in engine.events if e[1] == fast and e[0] == "in"][:4] == [
        ("in", fast, "1", 0), ("in", fast, "2", 5), ("in", fast, "1", 10), ("in", fast, "2", 15)]


def test_records_are_appended_in_groups_of_at_most_checkpoint_every(tmp_path, monkeypatch):
    from selflengthen.runfolder import store

    sizes = []
    real = store.ItemLog.append
    monkeypatch.setattr(store.ItemLog, "append", lambda self, recs: (sizes.append(len(recs)), real(self, recs))[1])
    log = open_log(tmp_path / "attempts.jsonl")
    items = {f"it{k:02d}": {} for k in range(20)}
    params = SamplingParams(max_new_tokens=100)

    def request(i, _item, attempt):
        return Request.chat(i, [("user", f"write about {i}, try {attempt}")], params)

    passed = redraws(log, items, request, lambda _item, text: (len(text) % 3 != 0, "odd"), 4, FakeEngine(),
                     Durability(every=3, seconds=60), lambda n: None)
    assert len(sizes) > 3 and max(sizes) <= 3 and sum(sizes) == len(log)
    assert set(passed) == set(items)


def test_a_slow_stream_is_made_durable_by_time(tmp_path):
    """checkpoint_every far above the stage's size: the timer still writes records while the stream runs."""
    log = open_log(tmp_path / "attempts.jsonl")
    items = {f"it{k:02d}": {} for k in range(12)}
    params = SamplingParams(max_new_tokens=100)
    on_disk_mid_stream = []

    class Slow(FakeEngine):
        def stream(self, queue):
            for n, c in enumerate(super().stream(queue)):
                if n == 10:
                    on_disk_mid_stream.append(len((tmp_path / "attempts.jsonl").read_text().splitlines())
                                              if (tmp_path / "attempts.jsonl").exists() else 0)
                yield c

    redraws(log, items, lambda i, _it, a: Request.chat(i, [("user", f"{i} {a}")], params),
            lambda _item, text: (True, ""), 1, Slow(delay=0.03), Durability(every=1000, seconds=0.05), lambda n: None)
    assert on_disk_mid_stream and on_disk_mid_stream[0] >= 3
    assert len(open_log(tmp_path / "attempts.jsonl")) == 12


def test_a_failed_append_stops_all_writing(tmp_path):
    """After one append fails, no later record reaches the log (a chain's later record must never land
    without its earlier one) and the error reaches the stage."""
    log = open_log(tmp_path / "log.jsonl")
    calls = []

    def failing(records):
        calls.append(len(records))
        raise OSError("disk full")

    log.append = failing
    journal = Journal(log, Durability(every=2, seconds=60))
    with pytest.raises(OSError):
        with journal:
            journal.add([{"id": "a"}, {"id": "b"}])
    with pytest.raises(OSError):
        journal.add([{"id": "c"}])
    assert calls == [2]


def test_a_chain_that_yields_records_and_requests_runs_to_its_end(tmp_path):
    log = open_log(tmp_path / "log.jsonl")
    params = SamplingParams(max_new_tokens=50)
    ended = []

    def chain(n):
        for step in range(3):
            c = yield Request.chat(f"c{n}", [("user", f"{n} {step}")], params)
            yield [{"id": f"c{n}#{step}", "text": c.text}]

    run_chains(FakeEngine(), log, (chain(n) for n in range(4)), Durability(every=5, seconds=60), ended.append)
    assert len(log) == 12 and sum(ended) == 4


def test_self_instruct_keeps_the_same_instructions_whatever_the_finishing_order(tmp_path):
    class Shuffled(FakeEngine):
        """Finishes whatever is queued in a random order."""

        def stream(self, queue):
            rng = random.Random(5)
            while queue:
                batch = queue.take()
                rng.shuffle(batch)
                for r in batch:
                    yield self._finish(r)

    out = {}
    for name, engine in (("plain", FakeEngine()), ("shuffled", Shuffled())):
        s = fake_settings(tmp_path / name, "iterations=1")
        self_instruct.run(RoundContext(s, 1, engine, {"generator": None, "extender": None}))
        out[name] = (tmp_path / name / "round_001/self_instruct/instructions.jsonl").read_text()
    assert out["plain"] == out["shuffled"]


ENV = {**os.environ, "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}


def test_a_kill_inside_extension_resumes_to_the_same_artifacts(tmp_path):
    """Only the timer makes records durable here (checkpoint_every is far above the stage's size): a kill
    once extension has saved some records, then a rerun, gives the uninterrupted run's artifacts."""
    def cli(root):
        return [sys.executable, "-m", "selflengthen", *FAKE, "iterations=1", "run.checkpoint_every=100000",
                "run.checkpoint_seconds=0.05", "engine.delay=0.02",
                f"run.root={root}", "run.name=job"]

    subprocess.run(cli(tmp_path / "ref"), cwd=REPO, env=ENV, check=True, capture_output=True, timeout=300)
    passes = tmp_path / "crash/job/round_001/extend/passes.jsonl"
    proc = subprocess.Popen(cli(tmp_path / "crash"), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (passes.exists() and passes.stat().st_size > 0) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before extension saved anything: raise engine.delay"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (passes.parent / "done.json").exists()
    subprocess.run(cli(tmp_path / "crash"), cwd=REPO, env=ENV, check=True, capture_output=True, timeout=300)
    assert tree(tmp_path / "crash/job") == tree(tmp_path / "ref/job")
