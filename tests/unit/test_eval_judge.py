"""eval.judge: S_q of every eval answer by a scripted judge, checked against hand-computed values; the judge
is part of the eval key (a result made without it is not reused); a judge model other than the run's gets
its own engine, closed after; the table shows S_q only when a judge scored."""

from __future__ import annotations

import json
import re

from conftest import fake_settings
from selflengthen import engines
from selflengthen.evidence import heldout

VERDICTS = {
    0: ["I think it is fine.", json.dumps({"Relevance": 5, "Accuracy": 5, "Coherence": 5, "Clarity": 5,
                                           "Breadth and Depth": 5, "Reading Experience": 5})],
    1: ["```json\n" + json.dumps({"relevance": 1, "accuracy": 2, "coherence": 3, "clarity": 4,
                                  "breadth & depth": 5, "reading_experience": 3}) + "\n```"],
    2: ["no idea"],  # never readable: the item fails, S_q over the other two
}


class Scripted:
    """Answers eval prompts with one sentence; judge prompts from VERDICTS (by item and attempt)."""

    def __init__(self, name="run"):
        self.name, self.requests, self.released, self.closed = name, [], 0, False

    def set_adapters(self, adapters):
        pass

    def load(self):
        pass

    def release(self):
        self.released += 1

    def close(self):
        self.closed = True

    def generate(self, requests, progress=None):
        self.requests += list(requests)
        out = []
        for r in requests:
            m = re.search(r"\.(\d{5})\.a(\d+)$", r.id)
            if r.id.startswith("judge"):
                replies = VERDICTS[int(m[1])]
                out.append(replies[min(int(m[2]), len(replies) - 1)])
            else:
                out.append("A short answer about the subject, complete and well formed.")
        if progress:
            progress(len(requests))
        return out


def test_s_q_by_hand_and_the_judge_in_the_key(tmp_path):
    s = fake_settings(tmp_path / "run", "eval.judge=self", "eval.limit=3")
    engine = Scripted()
    doc = heldout.evaluate_round(s, engine, 0, {"generator": None})
    # item 0: all 5s -> 100; item 1: (1,2,3,4,5,3) -> (0,25,50,75,100,50) -> 50; item 2: never readable
    assert [row["s_q"] for row in doc["rows"]] == [100.0, 50.0, None]
    assert doc["s_q"] == 75.0
    assert doc["s_q_relevance"] == 50.0 and doc["s_q_accuracy"] == 62.5 and doc["s_q_breadth_and_depth"] == 100.0
    assert doc["s_q_reading_experience"] == 75.0
    # attempts: 3 + 2 (items 0 and 2 re-asked) + 1 (item 2 again); unreadable: item 0 once, item 2 three times
    assert doc["judge"] == {"judged": 2, "failed": 1, "requests": 6, "unparseable": 4}
    judged = [r for r in engine.requests if r.id.startswith("judge")]
    assert len(judged) == 6 and all(r.adapter is None for r in judged)  # the base model judges, not the trained one
    assert judged[0].params.max_new_tokens == heldout.JUDGE_MAX_NEW_TOKENS
    assert doc["key"]["judge"]["model"] == s.model_path
    assert heldout.aggregates_of(doc)["s_q"] == 75.0

    # the same settings: reused, nothing asked again
    n = len(engine.requests)
    assert heldout.evaluate_round(s, engine, 0, {"generator": None})["s_q"] == 75.0 and len(engine.requests) == n
    # without a judge: another key (recomputed), no S_q, and the key has no judge entry at all
    plain = fake_settings(tmp_path / "run", "eval.limit=3")
    doc2 = heldout.evaluate_round(plain, engine, 0, {"generator": None})
    assert "judge" not in doc2["key"] and "s_q" not in doc2 and doc2["key_hash"] != doc["key_hash"]
    assert not any(r.id.startswith("judge") for r in engine.requests[n:])


def test_a_judge_model_gets_its_own_engine(tmp_path, monkeypatch):
    made = []

    def make(cfg, path):
        made.append(Scripted(path))
        return made[-1]

    monkeypatch.setattr(engines, "make_engine", make)
    s = fake_settings(tmp_path / "run", "eval.judge=judge-model", "eval.limit=2")
    run_engine = Scripted()
    doc = heldout.evaluate_round(s, run_engine, 0, {"generator": None})
    assert len(made) == 1 and made[0].name == "judge-model" and made[0].closed
    assert all(r.id.startswith("judge") for r in made[0].requests)
    assert not any(r.id.startswith("judge") for r in run_engine.requests) and run_engine.released == 1
    assert doc["s_q"] == 75.0 and doc["key"]["judge"]["model"] == "judge-model"


def test_table_shows_s_q_only_when_judged():
    from rich.console import Console

    def render(results):
        console = Console(width=100, record=True)
        console.print(heldout.table(results))
        return console.export_text()

    base = {"n": 1, "open": {"n": 1, "mean_words": 10.0}, "constrained": {"n": 0}}
    assert "S_q" not in render({0: base})
    assert "S_q" in render({0: {**base, "s_q": 62.5}}) and "62.5" in render({0: {**base, "s_q": 62.5}})
