"""Held-out eval of every round's generator on a finished fake run: files, aggregates, resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys

import pytest

from conftest import FAKE, REPO, fake_settings, finished_run
from selflengthen import recipe
from selflengthen.engines import session
from selflengthen.evidence import heldout
from selflengthen.writing.length_control import Constraint, length_score, s_l
from selflengthen.settings import ConfigError
from selflengthen.writing.text import count_words

ENV = {**os.environ, "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}


class Recorder(session.LazyEngine):
    """The fake engine, remembering every wave and the adapters it ran with."""

    def __init__(self):
        super().__init__({"name": "fake"}, lambda: "fake-model")
        self.waves: list[tuple[dict, list]] = []

    def generate(self, requests, progress=None):
        if requests:
            self.waves.append((dict(self.adapters), list(requests)))
        return super().generate(requests, progress)

    def stream(self, queue):
        if queue:  # the eval's wave: everything is queued before the stream starts
            self.waves.append((dict(self.adapters), list(queue._q)))
        return super().stream(queue)



@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    s = finished_run(tmp_path_factory.mktemp("run"))
    engine = Recorder()
    results = heldout.evaluate_run(s, engine)
    return s, engine, results


def test_every_round_gets_an_eval_file_with_the_aggregates(evaluated):
    s, engine, results = evaluated
    assert sorted(results) == [0, 1, 2]
    for r in (0, 1, 2):
        doc = json.loads((s.run_dir / "eval" / f"round_{r:03d}.json").read_text())
        for key in ("mean_words", "median_words", "repetition_pass_rate", "budget_hit_rate", "length_score", "s_l",
                    "rows"):
            assert key in doc
        assert doc["n"] == len(doc["rows"]) == len(heldout.load_prompts(heldout.prompt_path(s)))
        for row in doc["rows"]:
            assert {"prompt", "type", "words", "length_score", "s_l", "passes_filter", "reason", "finish",
                    "text"} <= set(row)
            assert ("low" in row and "high" in row) if row["type"] == "range" else "target" in row
        assert results[r] == heldout.aggregates_of(doc)


def test_aggregates_are_recomputed_from_the_rows(evaluated):
    s, _, _ = evaluated
    for r in (0, 1, 2):
        doc = json.loads((s.run_dir / "eval" / f"round_{r:03d}.json").read_text())
        rows = doc["rows"]
        words = [count_words(row["text"]) for row in rows]
        assert words == [row["words"] for row in rows]
        c = [Constraint.from_dict(row) for row in rows]
        assert doc["mean_words"] == pytest.approx(sum(words) / len(words))
        assert doc["median_words"] == pytest.approx(statistics.median(words))
        assert doc["repetition_pass_rate"] == pytest.approx(sum(row["passes_filter"] for row in rows) / len(rows))
        assert doc["length_score"] == pytest.approx(sum(map(length_score, c, words)) / len(rows))
        assert doc["s_l"] == pytest.approx(sum(s_l(x.reference(), w) for x, w in zip(c, words)) / len(rows))
        assert all(row["passes_filter"] == (row["reason"] == "") for row in rows)


def test_one_wave_per_round_with_that_rounds_generator(evaluated):
    s, engine, _ = evaluated
    finished = heldout.finished_rounds(s.run_dir)  # round -> the adapters, as the engine gets them
    expected = [finished[r] for r in (0, 1, 2)]
    assert not expected[0].get("generator") and expected[1]["generator"] != expected[2]["generator"]
    assert [adapters for adapters, _ in engine.waves] == expected
    for _, requests in engine.waves:
        assert all(q.adapter == "generator" and q.params.max_new_tokens == s.eval.max_new_tokens for q in requests)
        assert len({q.params.seed for q in requests}) == len(requests)  # a seed per prompt ...
    seeds = [[q.params.seed for q in requests] for _, requests in engine.waves]
    assert seeds[0] == seeds[1] == seeds[2]  # ... the same in every round: rounds differ by adapters only
    adapter = json.loads((s.run_dir / "eval/round_001.json").read_text())["adapter"]
    assert adapter == os.path.relpath(expected[1]["generator"], s.run_dir) and not os.path.isabs(adapter)


def test_rerun_is_a_noop_and_a_missing_round_alone_is_redone(evaluated):
    s, _, results = evaluated
    files = {p.name: p.read_bytes() for p in (s.run_dir / "eval").iterdir()}
    engine = Recorder()
    assert heldout.evaluate_run(s, engine) == results
    assert engine.inner is None  # nothing was missing: no model was even created
    assert {p.name: p.read_bytes() for p in (s.run_dir / "eval").iterdir()} == files

    (s.run_dir / "eval/round_001.json").unlink()
    engine = Recorder()
    heldout.evaluate_run(s, engine)
    assert len(engine.waves) == 1  # only the missing round
    again = json.loads((s.run_dir / "eval/round_001.json").read_text())
    before = json.loads(files["round_001.json"])
    assert again["rows"] == before["rows"]  # same seeds, same adapter: the same answers


def test_limit_and_every_round_put_eval_into_each_summary(tmp_path):
    s = finished_run(tmp_path, "eval.every_round=true", "eval.limit=5")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["round_000.json", "round_001.json", "round_002.json"]
    for r in (1, 2):
        summary = json.loads((tmp_path / f"round_{r:03d}/summary.json").read_text())
        doc = json.loads((tmp_path / f"eval/round_{r:03d}.json").read_text())
        assert summary["eval"] == heldout.aggregates_of(doc)
        assert summary["eval"]["n"] == 5
        assert len({row["type"] for row in doc["rows"]}) == 4  # spread over the file: every constraint kind
    engine = Recorder()
    heldout.evaluate_run(s, engine)  # the standalone command finds everything done
    assert engine.inner is None


@pytest.mark.parametrize("content, says", [
    ('{"prompt": "Write a poem.", "type": "about", "target": 100}\nnot json\n', "line 2 is not valid JSON"),
    ('{"type": "about", "target": 100}\n', 'line 1 has no non-empty string field "prompt"'),
    ('{"prompt": "Write.", "type": "about"}\n', "line 1 lacks the field 'target'"),
    ('{"prompt": "Write.", "type": "range", "low": 300, "high": 200}\n', "line 1 has an unusable length constraint"),
    ('{"prompt": "Write.", "type": "roughly", "target": 50}\n', "line 1 has an unusable length constraint"),
    ("\n", "it holds no prompts"),
])
def test_a_malformed_prompt_file_is_a_clear_config_error(tmp_path, content, says):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(ConfigError) as err:
        heldout.load_prompts(bad)
    assert "eval.prompt_file" in str(err.value) and says in str(err.value) and "Fix:" in str(err.value)


def test_a_bad_prompt_file_stops_before_any_model_loads(tmp_path):
    s = fake_settings(tmp_path / "run", f"eval.prompt_file={tmp_path / 'missing.jsonl'}")
    engine = Recorder()
    with pytest.raises(ConfigError, match="eval.prompt_file.*does not exist"):
        heldout.evaluate_run(s, engine)
    assert engine.inner is None and not (tmp_path / "run/eval").exists()


def test_cli_evaluates_a_run_and_keeps_the_runs_own_hydra_record(tmp_path):
    finished_run(tmp_path / "x", "iterations=1")
    cmd = [sys.executable, "-m", "selflengthen", "eval", *FAKE, "iterations=1", f"run.root={tmp_path}", "run.name=x",
           "eval.limit=4"]
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for r in (0, 1):
        assert json.loads((tmp_path / f"x/eval/round_{r:03d}.json").read_text())["n"] == 4
    assert (tmp_path / "x/.hydra/eval/config.yaml").exists() and not (tmp_path / "x/.hydra/config.yaml").exists()

    shutil.copy(REPO / "selflengthen/data/eval_en.jsonl", tmp_path / "bad.jsonl")
    with open(tmp_path / "bad.jsonl", "a") as f:
        f.write("{oops\n")
    (tmp_path / "x/eval/round_001.json").unlink()
    done = subprocess.run(cmd + [f"eval.prompt_file={tmp_path / 'bad.jsonl'}"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "eval.prompt_file" in done.stderr and "Traceback" not in done.stderr


# --- the cache key: a stored result stands only for the settings that made it ---------------------------------

BASE = ("iterations=1", "eval.limit=4")


def eval_docs(s) -> dict[int, dict]:
    return {r: json.loads(heldout.eval_file(s.run_dir, r).read_text()) for r in (0, 1)}


@pytest.fixture
def evaluated_small(tmp_path):
    s = finished_run(tmp_path, *BASE)
    heldout.evaluate_run(s, Recorder())
    return s


@pytest.mark.parametrize("override, changed", [
    ("eval.limit=3", "limit"), ("eval.max_new_tokens=300", "max_new_tokens"), ("model.path=other-model", "model"),
    ("eval.decoding.temperature=0.3", "decoding"), ("seed=7", "seed"),
])
def test_a_changed_setting_is_evaluated_again_never_served_from_the_old_result(evaluated_small, caplog, override,
                                                                             changed):
    s = evaluated_small
    before = eval_docs(s)
    other = fake_settings(s.run_dir, *BASE, override)
    engine = Recorder()
    with caplog.at_level("WARNING", logger="selflengthen.evidence.heldout"):
        heldout.evaluate_run(other, engine)
    assert len(engine.waves) == 2  # round 0 and round 1, both generated again
    assert caplog.text.count("made with other settings") == 2 and changed in caplog.text
    after = eval_docs(other)
    for r in (0, 1):
        assert after[r]["key"] == heldout.eval_key(other, heldout.finished_rounds(s.run_dir)[r])
        assert after[r]["key"] != before[r]["key"] and after[r]["key_hash"] != before[r]["key_hash"]
    assert after[0]["n"] == (3 if changed == "limit" else 4)

    # the first settings' results were kept aside: asking for them again brings them back, no generation
    engine = Recorder()
    assert heldout.evaluate_run(s, engine) == {r: heldout.aggregates_of(before[r]) for r in (0, 1)}
    assert engine.inner is None and eval_docs(s) == before
    engine = Recorder()
    heldout.evaluate_run(other, engine)  # and the other way round
    assert engine.inner is None and eval_docs(other) == after


def test_the_same_settings_reuse_the_stored_result(evaluated_small):
    s = evaluated_small
    before = {p: p.read_bytes() for p in (s.run_dir / "eval").rglob("*.json")}
    engine = Recorder()
    heldout.evaluate_run(fake_settings(s.run_dir, *BASE, "run.checkpoint_every=5"), engine)  # throughput only
    assert engine.inner is None
    assert {p: p.read_bytes() for p in (s.run_dir / "eval").rglob("*.json")} == before


def test_a_quick_limited_eval_never_stands_in_for_the_full_one(evaluated_small):
    s = evaluated_small
    full = fake_settings(s.run_dir, "iterations=1")
    engine = Recorder()
    results = heldout.evaluate_run(full, engine)
    n = len(heldout.load_prompts(heldout.prompt_path(full)))
    assert len(engine.waves) == 2 and results[0]["n"] == results[1]["n"] == n > 4


def test_a_retrained_adapter_is_noticed(evaluated_small):
    s = evaluated_small
    from conftest import retrain_in_place

    retrain_in_place(s.run_dir, 1)  # same path, new weights
    engine = Recorder()
    heldout.evaluate_run(s, engine)
    assert [adapters for adapters, _ in engine.waves] == [heldout.finished_rounds(s.run_dir)[1]]  # round 1 only
    assert eval_docs(s)[1]["key"]["adapter"]["sha256"] == heldout.adapter_identity(
        s.run_dir, heldout.finished_rounds(s.run_dir)[1]["generator"])["sha256"]


def test_an_eval_file_that_records_no_settings_is_redone(evaluated_small):
    s = evaluated_small
    path = heldout.eval_file(s.run_dir, 1)
    doc = json.loads(path.read_text())
    legacy = {k: v for k, v in doc.items() if k not in ("key", "key_hash", "open", "constrained", "max_words")}
    path.write_text(json.dumps(legacy))
    engine = Recorder()
    heldout.evaluate_run(s, engine)
    again = json.loads(path.read_text())
    assert len(engine.waves) == 1 and again.pop("seconds") and again == {k: v for k, v in doc.items() if k != "seconds"}


def test_invalid_eval_values_stop_before_any_generation(evaluated_small):
    import dataclasses

    s = evaluated_small
    for field, value in (("limit", 0), ("limit", -1), ("limit", "abc"), ("max_new_tokens", 0)):
        bad = dataclasses.replace(s, eval=dataclasses.replace(s.eval, **{field: value}))
        engine = Recorder()
        for call in (lambda: heldout.evaluate_run(bad, engine), lambda: heldout.evaluate_round(bad, engine, 2, {})):
            with pytest.raises(ConfigError, match=f"eval.{field}="):
                call()
        assert engine.inner is None and not heldout.eval_file(s.run_dir, 2).exists()


@pytest.mark.parametrize("value", ["-1", "0", "abc", "2.5"])
def test_cli_refuses_a_bad_limit_without_writing_an_eval(tmp_path, value):
    cmd = [sys.executable, "-m", "selflengthen", "eval", *FAKE, "iterations=1", f"run.root={tmp_path}", "run.name=x",
           f"eval.limit={value}"]
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "eval.limit" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x/eval").exists() or not any((tmp_path / "x/eval").rglob("*.json"))


def test_open_prompts_in_a_run_eval(tmp_path):
    s = finished_run(tmp_path, "iterations=1", "eval.prompt_file=eval_mixed_en.jsonl", "eval.limit=6")
    assert heldout.prompt_path(s) == heldout.shipped_data("eval_mixed_en.jsonl")  # a bare name: the shipped file
    results = heldout.evaluate_run(s, Recorder())
    doc = eval_docs(s)[1]
    open_rows = [r for r in doc["rows"] if r["type"] == "none"]
    constrained = [r for r in doc["rows"] if r["type"] != "none"]
    assert results[1]["open"]["n"] == len(open_rows) >= 1 and results[1]["constrained"]["n"] == len(constrained) >= 1
    assert len(doc["rows"]) == doc["n"] == 6
    assert doc["open"]["mean_words"] == pytest.approx(sum(r["words"] for r in open_rows) / len(open_rows))
    assert doc["open"]["max_words"] == max(r["words"] for r in open_rows)
    assert all(r["length_score"] is None and r["s_l"] is None for r in open_rows)
    assert doc["length_score"] == doc["constrained"]["length_score"] == pytest.approx(
        sum(r["length_score"] for r in constrained) / len(constrained))


def test_budget_hit_rate_is_the_share_of_answers_the_budget_cut(tmp_path):
    """Length bought by running to the budget is visible in one number, overall and per group."""
    import dataclasses

    from selflengthen.engines.fake import FakeEngine

    class CutsOpen(FakeEngine):  # open prompts run to the budget; constrained ones end
        def _finish(self, r):
            c = super()._finish(r)
            return dataclasses.replace(c, finish_reason="length") if "words" not in r.messages[-1][1] else c

    s = fake_settings(tmp_path, "eval.prompt_file=eval_mixed_en.jsonl", "eval.limit=12")
    lazy = session.LazyEngine({"name": "fake"}, lambda: "m")
    lazy.inner = CutsOpen()
    doc = heldout.evaluate_round(s, lazy, 0, {})
    open_rows = [r for r in doc["rows"] if heldout.is_open(r)]
    assert open_rows and len(open_rows) < len(doc["rows"])
    hits = [r["finish"] == "length" for r in doc["rows"]]
    assert doc["budget_hit_rate"] == pytest.approx(sum(hits) / len(hits)) and 0 < doc["budget_hit_rate"] < 1
    assert doc["open"]["budget_hit_rate"] == 1.0 and all(r["finish"] == "length" for r in open_rows)
    assert doc["constrained"]["budget_hit_rate"] == pytest.approx(
        sum(r["finish"] == "length" for r in doc["rows"] if not heldout.is_open(r)) / (len(doc["rows"]) - len(open_rows)))
    # rows scored before finish reasons were recorded: no rate rather than a made-up 0
    assert heldout.group_stats([{k: v for k, v in r.items() if k != "finish"} for r in doc["rows"]])[
        "budget_hit_rate"] is None

def test_the_eval_samples_with_its_own_decoding(evaluated_small):
    """LongBench-Write's decoding (eval.decoding: temperature 0.5, no repetition penalty) for every eval
    request; the data-making `decoding:` neither reaches the requests nor changes the eval's key."""
    s = evaluated_small
    rounds = heldout.finished_rounds(s.run_dir)
    other = fake_settings(s.run_dir, *BASE, "decoding.temperature=0.3", "decoding.repetition_penalty=1.3")
    assert heldout.eval_key(other, rounds[1]) == heldout.eval_key(s, rounds[1])
    engine = Recorder()
    heldout.evaluate_run(fake_settings(s.run_dir, *BASE, "eval.decoding.top_k=7"), engine)
    params = [r.params for _, wave in engine.waves for r in wave]
    assert params and all((p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (0.5, 1.0, 7, 1.0)
                          for p in params)
