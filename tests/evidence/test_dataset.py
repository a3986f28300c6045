"""The final collection on a finished fake run: length-controlled export in three formats that load back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE, REPO, compose, fake_engine, fake_settings, finished_run
from selflengthen.evidence import dataset
from selflengthen.engines.fake import FakeEngine
from selflengthen.writing.length_control import Constraint, kind_of_phrase, length_score
from selflengthen.settings import Collect, ConfigError
from selflengthen.support.checks import parse_section
from selflengthen.runfolder.store import read_jsonl
from selflengthen.writing.text import count_words

ENV = {**os.environ, "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}


def collect_config(cfg) -> Collect:
    """The `collect:` section of a composed config, checked as the run checks it (settings.Collect)."""
    return parse_section(Collect, cfg.get("collect"), "collect")


def all_in(**kw) -> Collect:
    """Every pair in: no word range, no sampling of the fresh answers (the paper's defaults drop most of a
    fake run's short pairs; the tests below that want them say so)."""
    return Collect(**{"min_words": 0, "max_words": None, "sample_answers": False, **kw})


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    s = finished_run(tmp_path_factory.mktemp("run"))
    info = dataset.collect(s, all_in(num_new=3), fake_engine())
    return s, info


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def check_export(s, lang: str) -> list[dict]:
    """Every format loads back, every row's constraint is met by its answer and phrased as labelled."""
    import datasets

    out = s.run_dir / "export"
    ds = datasets.load_from_disk(str(out / "hf_dataset"))
    chat = read_jsonl(out / "chat.jsonl")
    alpaca = json.loads((out / "alpaca.json").read_text())
    assert len(ds) == len(chat) == len(alpaca) > 0
    assert {"messages", "constraint_type", "constraint_target", "constraint_low", "constraint_high",
            "constraint_text", "words", "round"} <= set(ds.column_names)
    join = s.prompts["length_control"]["join"]
    for row, c_row, a_row in zip(ds, chat, alpaca):
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] == [m["role"] for m in c_row["messages"]]
        query, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        c = Constraint(row["constraint_type"], target=row["constraint_target"], low=row["constraint_low"],
                       high=row["constraint_high"])
        assert Constraint.from_dict(c_row["constraint"]) == c
        assert row["words"] == count_words(answer)
        assert length_score(c, count_words(answer)) == 1  # satisfiable: the answer itself meets it
        assert kind_of_phrase(row["constraint_text"], lang) == c.kind  # and the words say that kind
        assert query == join.format(query=row["instruction"], constraint=row["constraint_text"])
        assert (a_row["instruction"], a_row["input"], a_row["output"]) == (query, "", answer)
    pairs = [(norm(r["instruction"]), norm(r["messages"][-1]["content"])) for r in chat]
    assert len(pairs) == len(set(pairs))  # no duplicates
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["selflengthen"]["file_name"] == "alpaca.json"
    assert info["selflengthen_chat"]["file_name"] == "chat.jsonl"
    assert json.loads((out / "done.json").read_text())["files"].keys() >= {"chat.jsonl", "alpaca.json"}
    return chat


def test_export_loads_back_with_satisfiable_well_labelled_constraints(collected):
    s, info = collected
    chat = check_export(s, "en")
    assert info["rows"] == len(chat)
    assert len({r["constraint"]["type"] for r in chat}) >= 3  # the kinds are mixed
    assert {r["round"] for r in chat} == {1, 2, 3}  # both rounds' pairs and the collected answers (round 3)


def test_every_initial_and_extended_pair_and_every_new_answer_is_in(collected):
    s, info = collected
    chat = read_jsonl(s.run_dir / "export/chat.jsonl")
    have = {(norm(r["instruction"]), norm(r["messages"][-1]["content"])) for r in chat}
    # the paper's collect_data.py: every round's initial and extended answers, so the length-controlled
    # queries span short and long answers (often to one instruction)
    rounds = {stage: {(norm(row["instruction"]), norm(row["text"])) for r in (1, 2)
                      for row in read_jsonl(s.run_dir / f"round_{r:03d}/{stage}/{artifact}")}
              for stage, artifact in (("initial", "responses.jsonl"), ("extend", "extended.jsonl"))}
    answers = read_jsonl(s.run_dir / "collect/02_answers/answers.jsonl")
    want = rounds["initial"] | rounds["extend"] | {(norm(a["instruction"]), norm(a["text"])) for a in answers}
    assert have == want
    assert info["from_collect"] == len(answers) > 0
    assert info["sources"] == {"initial": len(rounds["initial"]), "extend": len(rounds["extend"]),
                               "collect": len(answers)}
    assert info["from_rounds"] == len(rounds["initial"]) + len(rounds["extend"])
    by_source = {src: [r["words"] for r in chat if r["source"] == src] for src in ("initial", "extend")}
    assert max(by_source["initial"]) < max(by_source["extend"])  # the length range the constraints need
    assert {r["instruction"] for r in chat if r["source"] == "initial"} & {
        r["instruction"] for r in chat if r["source"] == "extend"}  # the same instruction at two lengths
    fresh = {norm(i["prompt"]) for i in read_jsonl(s.run_dir / "collect/self_instruct/instructions.jsonl")}
    earlier = {norm(i["prompt"]) for r in (1, 2)
               for i in read_jsonl(s.run_dir / f"round_{r:03d}/self_instruct/instructions.jsonl")}
    assert len(fresh) == 3 and not fresh & earlier  # fresh instructions, none repeated from the rounds


def test_hf_dataset_and_chat_jsonl_load_as_training_sets(collected, tmp_path):
    import datasets

    s, _ = collected
    chat = datasets.load_dataset("json", data_files=str(s.run_dir / "export/chat.jsonl"), split="train",
                                 cache_dir=str(tmp_path))
    assert chat[0]["messages"][-1]["role"] == "assistant"  # TRL's conversational format
    alpaca = datasets.load_dataset("json", data_files=str(s.run_dir / "export/alpaca.json"), split="train",
                                   cache_dir=str(tmp_path))
    assert {"instruction", "input", "output"} <= set(alpaca.column_names)


def test_rerun_is_a_noop(collected):
    s, info = collected
    before = {p: p.read_bytes() for p in (s.run_dir / "export").rglob("*") if p.is_file()}
    engine = fake_engine()
    assert dataset.collect(s, all_in(num_new=3), engine) == info
    assert engine.inner is None
    assert {p: p.read_bytes() for p in (s.run_dir / "export").rglob("*") if p.is_file()} == before


def test_an_export_made_from_other_artifacts_is_made_again(collected, monkeypatch):
    """An export whose key names another set of round artifacts (an older version took the extended answers
    only) is never served as today's: it is rebuilt, and the fresh answers are not drawn again."""
    s, info = collected
    done = s.run_dir / "export/done.json"
    doc = json.loads(done.read_text())
    doc["summary"]["made_by"]["pairs"] = [["extend", "extended.jsonl"]]
    done.write_text(json.dumps(doc))
    engine = fake_engine()
    again = dataset.collect(s, all_in(num_new=3), engine)
    assert engine.inner is None  # the collected answers are reused: nothing generated
    assert again["made_by"]["pairs"] == [["initial", "responses.jsonl"], ["extend", "extended.jsonl"]]
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in info.items() if k != "seconds"}


def test_zh_prompt_set(tmp_path):
    s = finished_run(tmp_path, "prompts=zh", "iterations=1")
    dataset.collect(s, all_in(num_new=2), fake_engine())
    chat = check_export(s, "zh")  # phrased with the zh templates and read back by the zh rules
    assert all(r["messages"][0]["content"] == r["instruction"] + r["constraint"]["text"] for r in chat)  # no space


def test_a_run_that_gained_rounds_is_collected_again(tmp_path):
    s = finished_run(tmp_path, "iterations=1")
    assert dataset.collect(s, all_in(num_new=2), fake_engine())["final_round"] == 1
    s = finished_run(tmp_path, "iterations=2")
    info = dataset.collect(s, all_in(num_new=2), fake_engine())
    assert info["final_round"] == 2
    assert {r["round"] for r in read_jsonl(tmp_path / "export/chat.jsonl")} == {1, 2, 3}


class Rewriter(FakeEngine):
    """Rewrites a query by putting the requirement in front of it; otherwise the fake engine."""

    def _one(self, r):
        text = r.messages[-1][1] if r.messages else ""
        if "Length requirement:" in text:
            query = text.split("Request: ", 1)[1].split("\n", 1)[0]
            requirement = text.split("Length requirement: ", 1)[1].split("\n", 1)[0]
            return f'"{requirement} {query}"'
        return super()._one(r)


def test_rewrite_mode_uses_the_rewrite_or_falls_back_to_the_template(tmp_path):
    s = finished_run(tmp_path / "a", "iterations=1")
    dataset.collect(s, all_in(num_new=0, rewrite=True), Rewriter())
    chat = read_jsonl(s.run_dir / "export/chat.jsonl")
    assert chat and all(r["rewritten"] for r in chat)
    assert all(r["messages"][0]["content"] == f"{r['constraint']['text']} {r['instruction']}" for r in chat)
    assert {r["round"] for r in chat} == {1}  # num_new=0: the rounds' pairs only

    s = finished_run(tmp_path / "b", "iterations=1")  # the fake engine's rewrites hold no number
    dataset.collect(s, all_in(num_new=0, rewrite=True), fake_engine())
    chat = read_jsonl(s.run_dir / "export/chat.jsonl")
    assert chat and not any(r["rewritten"] for r in chat)
    assert all(r["messages"][0]["content"].endswith(r["constraint"]["text"]) for r in chat)


def test_collect_config_is_checked():
    assert collect_config(compose(*FAKE)) == Collect(min_words=20, max_words=1000)
    assert collect_config(compose()) == Collect()  # the paper's defaults
    assert Collect().kinds == {"about": 0.40, "range": 0.25, "above": 0.10, "below": 0.25}
    assert (Collect().min_words, Collect().max_words) == (2000, 8000)
    for bad, key in (("collect.max_words=10", "collect.max_words"), ("+collect.kinds.often=1", "collect.kinds.often"),
                     ("collect.kinds.about=-1", "collect.kinds.about")):
        with pytest.raises(ConfigError, match=key):
            collect_config(compose(*FAKE, bad))
    assert collect_config(compose(*FAKE, "collect.num_new=0", "collect.rewrite=true")).rewrite is True
    with pytest.raises(ConfigError, match="collect.num_new"):
        collect_config(compose(*FAKE, "collect.num_new=-1"))
    with pytest.raises(ConfigError, match="collect.numnew"):
        collect_config(compose(*FAKE, "+collect.numnew=3"))


def test_cli_collects_a_run(tmp_path):
    finished_run(tmp_path / "x", "iterations=1")
    cmd = [sys.executable, "-m", "selflengthen", "collect", *FAKE, "iterations=1", f"run.root={tmp_path}", "run.name=x",
           "collect.num_new=2"]
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "x/export/done.json").exists() and (tmp_path / "x/export/hf_dataset").is_dir()
    assert (tmp_path / "x/.hydra/collect/config.yaml").exists()


# --- the export records what made it ----------------------------------------------------------------------

def export_files(s) -> dict:
    return {p.relative_to(s.run_dir): p.read_bytes() for p in (s.run_dir / "export").rglob("*")
            if p.is_file() and p.name != "done.json"}


@pytest.mark.parametrize("override, changed", [("seed=7", "seed"), ("model.path=other-model", "model"),
                                               ("decoding.temperature=0.3", "decoding")])
def test_a_foreign_collection_is_redone_for_the_runs_own_config(tmp_path, caplog, override, changed):
    s = finished_run(tmp_path, "iterations=1")
    cc = all_in(num_new=2)
    own = dataset.collect(s, cc, fake_engine())
    own_files = export_files(s)

    foreign = fake_settings(tmp_path, "iterations=1", override)
    engine = fake_engine()
    with caplog.at_level("WARNING", logger="selflengthen.evidence.dataset"):
        info = dataset.collect(foreign, cc, engine)
    assert engine.inner is not None  # generated again, not "complete on disk: skipped"
    assert "made with other settings" in caplog.text and changed in caplog.text
    assert info["made_by"] != own["made_by"]
    assert json.loads((tmp_path / "export/done.json").read_text())["summary"]["made_by"] == info["made_by"]

    caplog.clear()
    engine = fake_engine()
    with caplog.at_level("WARNING", logger="selflengthen.evidence.dataset"):
        again = dataset.collect(s, cc, engine)  # the run's own config: its own export, not the foreign one
    assert engine.inner is not None and "made with other settings" in caplog.text
    assert again["made_by"] == own["made_by"] and export_files(s) == own_files


def test_a_retrained_adapter_is_collected_again(tmp_path):
    from selflengthen.evidence.heldout import finished_rounds

    s = finished_run(tmp_path, "iterations=1")
    cc = all_in(num_new=2)
    dataset.collect(s, cc, fake_engine())
    from conftest import retrain_in_place

    assert finished_rounds(s.run_dir)[1]["generator"].endswith("round_001/train/generator/adapter")
    retrain_in_place(s.run_dir, 1)  # same path, new weights, its record rewritten as training would
    engine = fake_engine()
    info = dataset.collect(s, cc, engine)
    assert engine.inner is not None
    assert info["made_by"]["adapters"]["generator"]["path"] == "round_001/train/generator/adapter"


def test_the_same_config_is_skipped_and_only_the_export_follows_rewrite(tmp_path):
    s = finished_run(tmp_path, "iterations=1")
    dataset.collect(s, all_in(num_new=2), fake_engine())
    answers = (tmp_path / "collect/02_answers/answers.jsonl").read_bytes()
    engine = fake_engine()
    dataset.collect(fake_settings(tmp_path, "iterations=1", "run.checkpoint_every=5"), all_in(num_new=2),
                    engine)  # a throughput knob
    assert engine.inner is None
    info = dataset.collect(s, all_in(num_new=2, rewrite=True), fake_engine())
    assert info["made_by"]["rewrite"] is True
    assert (tmp_path / "collect/02_answers/answers.jsonl").read_bytes() == answers  # the answers were kept


def test_the_final_data_keeps_the_word_range_samples_fresh_answers_and_draws_the_kinds(tmp_path):
    """The paper's final data: only answers in [min_words, max_words), the fresh answers after length-aware
    sampling, constraint kinds drawn with the configured weights. Changing them re-exports without
    answering again."""
    s = finished_run(tmp_path, "iterations=1")
    everything = dataset.collect(s, all_in(num_new=4), fake_engine())
    words = sorted(r["words"] for r in read_jsonl(s.run_dir / "export/chat.jsonl"))
    lo, hi = words[len(words) // 4], words[3 * len(words) // 4]
    engine = fake_engine()
    info = dataset.collect(s, all_in(num_new=4, min_words=lo, max_words=hi), engine)
    assert engine.inner is None  # the same answers: only the export is made again
    kept = [r["words"] for r in read_jsonl(s.run_dir / "export/chat.jsonl")]
    assert kept and all(lo <= w < hi for w in kept)
    assert info["rows"] == sum(lo <= w < hi for w in words) and info["out_of_range"] == len(words) - len(kept)
    # length-aware sampling of the fresh answers: the shortest of them (rank 1) never survives a=2, p=3
    answers = read_jsonl(s.run_dir / "collect/02_answers/answers.jsonl")
    info = dataset.collect(s, all_in(num_new=4, sample_answers=True), fake_engine())
    assert info["from_collect"] + info["answers_sampled_out"] == len(answers) == 4
    shortest = min(answers, key=lambda a: len(a["text"]))["text"].strip()
    assert info["from_collect"] < 4 and shortest not in {r["messages"][-1]["content"]
                                                         for r in read_jsonl(s.run_dir / "export/chat.jsonl")}
    # kinds: a weight of 0 is never drawn
    info = dataset.collect(s, all_in(num_new=4, kinds={"about": 0, "range": 1, "above": 0, "below": 1}), fake_engine())
    assert set(info["kinds"]) == {"range", "below"} and info["rows"] == everything["rows"]


def test_a_word_range_that_leaves_nothing_is_a_clear_error_and_the_answers_are_kept(tmp_path):
    """The paper's 2,000-8,000 words on a fake run's short answers: one message naming the keys and a range
    that fits, nothing exported; the rerun with a fitting range reuses the stored answers."""
    s = finished_run(tmp_path, "iterations=1")
    with pytest.raises(ConfigError, match=r"collect\.min_words=2000, collect\.max_words=8000 .* Fix: .*collect\.min_words="):
        dataset.collect(s, Collect(num_new=2), fake_engine())
    assert not (s.run_dir / "export/done.json").exists()
    assert (s.run_dir / "collect/02_answers/answers.jsonl").exists()
    engine = fake_engine()
    assert dataset.collect(s, all_in(num_new=2), engine)["rows"] > 0
    assert engine.inner is None  # the answers made before the error are used, not generated again
