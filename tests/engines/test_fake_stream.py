"""The fake engine's stream and latency model: the same texts as before, requests added mid-stream are
served, and the simulated clock and counters give utilization without a model."""

from __future__ import annotations

import pytest

from selflengthen.engines import parse_config
from selflengthen.engines.base import Request, RequestQueue, SamplingParams
from selflengthen.engines.fake import FakeEngine

P = SamplingParams(max_new_tokens=400, seed=1)


def req(i: str, words: int = 10) -> Request:
    return Request.chat(i, [("user", " ".join(["word"] * words))], P)


class Declared(FakeEngine):
    def __init__(self, lengths: dict, **kw):
        super().__init__("m", **kw)
        self.lengths = lengths

    def tokens(self, request, text):
        return self.lengths[request.id]


def test_stream_gives_the_generate_texts_and_serves_requests_added_meanwhile():
    e = FakeEngine()
    texts = e.generate([req("a"), req("b", 30)])
    queue = RequestQueue([req("a")])
    got = []
    for c in e.stream(queue):
        got.append((c.id, c.text))
        if c.id == "a":
            queue.add(req("b", 30))
    assert got == [("a", texts[0]), ("b", texts[1])]


def test_latency_model_counts_steps_tokens_and_simulated_time():
    e = Declared({"a": 3, "b": 5, "c": 2}, max_slots=2, step_seconds=0.5, token_seconds=0.25)
    order = [c.id for c in e.stream(RequestQueue([req("a"), req("b"), req("c")]))]
    # a and b start together; a ends at step 3, c takes its slot and ends at step 5 with b
    assert order == ["a", "b", "c"] or order == ["a", "c", "b"]
    assert (e.sim.steps, e.sim.tokens, e.sim.peak) == (5, 10, 2)
    assert e.sim.utilization == pytest.approx(10 / (5 * 2))
    assert e.sim.seconds == pytest.approx(5 * (0.5 + 0.25 * 2))


def test_a_request_queued_after_a_completion_joins_the_next_step():
    e = Declared({"a": 2, "b": 10, "c": 3}, max_slots=2)
    queue = RequestQueue([req("a"), req("b")])
    for c in e.stream(queue):
        if c.id == "a":
            queue.add(req("c"))  # a chain's next step: starts at step 2, ends at 5, before b (10)
    assert e.sim.steps == 10 and e.sim.tokens == 15


def test_engine_settings_are_checked_at_start_up():
    assert parse_config({"name": "fake", "max_slots": 256, "step_seconds": 0.02})["max_slots"] == 256
    with pytest.raises(Exception, match="max_slots"):
        parse_config({"name": "fake", "max_slots": 0})
    with pytest.raises(Exception, match="max_slots"):
        parse_config({"name": "fake", "token_seconds": 0.1})
