"""evaluate's pure parts: open vs constrained scoring, the two groups, prompt-file rows, the settings check."""

from __future__ import annotations

import dataclasses
import json

import pytest

from selflengthen.evidence import heldout
from selflengthen.writing import filters
from selflengthen.settings import ConfigError


def text_of(n: int, end: str = ".") -> str:
    """n distinct words (no repeated 10-gram), ending with `end`."""
    return " ".join(f"w{i}" for i in range(n)) + end


def test_a_mix_of_open_and_constrained_rows_is_scored_by_hand():
    fcfg = filters.FilterConfig()
    rows = [heldout.score_row({"prompt": "Write an essay.", "type": "none"}, text_of(100), fcfg),
            heldout.score_row({"prompt": "Write a story.", "type": "none"}, text_of(300, end=""), fcfg),  # no "."
            heldout.score_row({"prompt": "Write a note.", "type": "about", "target": 200}, text_of(150), fcfg)]
    assert [r["words"] for r in rows] == [100, 300, 150]
    assert [r["passes_filter"] for r in rows] == [True, False, True]
    assert rows[0]["length_score"] is None and rows[0]["s_l"] is None  # an open prompt asks for no length
    # about 200: band [160, 240]; 150 words -> 2*150/160 - 1 = 0.875; S_l = 100 * (1 - (200/150 - 1) / 2)
    assert rows[2]["length_score"] == pytest.approx(0.875)
    assert rows[2]["s_l"] == pytest.approx(250 / 3)

    doc = heldout.aggregate(rows)
    assert doc["open"] == pytest.approx({"n": 2, "mean_words": 200.0, "median_words": 200.0, "max_words": 300,
                                         "repetition_pass_rate": 0.5, "budget_hit_rate": 0.0})
    assert doc["constrained"] == pytest.approx({"n": 1, "mean_words": 150.0, "median_words": 150.0, "max_words": 150,
                                                "repetition_pass_rate": 1.0, "length_score": 0.875,
                                                "s_l": 250 / 3, "budget_hit_rate": 0.0})
    # top level: words and pass rate over all rows, length scores over the constrained row only
    assert doc["n"] == 3 and doc["mean_words"] == pytest.approx(550 / 3) and doc["median_words"] == 150
    assert doc["max_words"] == 300 and doc["repetition_pass_rate"] == pytest.approx(2 / 3)
    assert doc["length_score"] == pytest.approx(0.875) and doc["s_l"] == pytest.approx(250 / 3)


def test_length_scores_average_the_constrained_rows_only():
    rows = [{"type": "none", "words": 5, "passes_filter": True, "length_score": None, "s_l": None},
            {"type": "below", "target": 100, "words": 80, "passes_filter": True, "length_score": 1.0, "s_l": 80.0},
            {"type": "range", "low": 100, "high": 200, "words": 60, "passes_filter": False, "length_score": 0.2,
             "s_l": 40.0}]
    doc = heldout.aggregate(rows)
    assert doc["length_score"] == pytest.approx(0.6) and doc["s_l"] == pytest.approx(60.0)
    assert doc["constrained"]["n"] == 2 and doc["open"]["n"] == 1


def test_an_empty_group_has_no_numbers_not_zeros():
    doc = heldout.aggregate([{"type": "none", "words": 10, "passes_filter": True, "length_score": None, "s_l": None}])
    assert doc["constrained"] == {"n": 0, "mean_words": None, "median_words": None, "max_words": None,
                                  "repetition_pass_rate": None, "budget_hit_rate": None, "length_score": None,
                                  "s_l": None}
    assert doc["length_score"] is None and doc["s_l"] is None
    only_constrained = heldout.aggregate([{"type": "about", "target": 10, "words": 10, "passes_filter": True,
                                            "length_score": 1.0, "s_l": 100.0}])
    assert only_constrained["open"]["n"] == 0 and only_constrained["open"]["mean_words"] is None


def test_open_rows_in_the_prompt_file(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": " Write an essay. "}\n{"prompt": "Write a story.", "type": "none"}\n'
                 '{"prompt": "Write a poem.", "type": null}\n{"prompt": "Write.", "type": "about", "target": 50}\n')
    rows = heldout.load_prompts(f)
    assert rows == [{"prompt": "Write an essay.", "type": "none"}, {"prompt": "Write a story.", "type": "none"},
                    {"prompt": "Write a poem.", "type": "none"}, {"prompt": "Write.", "type": "about", "target": 50}]
    f.write_text('{"prompt": "Write.", "target": 300}\n')  # a forgotten type is not an open prompt
    with pytest.raises(ConfigError, match="line 1 has target but no length-constraint type"):
        heldout.load_prompts(f)


def test_a_limit_covers_both_groups(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = [{"prompt": f"open {i}"} for i in range(10)] + [{"prompt": f"c {i}", "type": "about", "target": 100}
                                                           for i in range(10)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))  # all open rows first: a plain spread would miss none
    for limit in (2, 3, 7):
        picked = heldout.load_prompts(f, limit)
        assert len(picked) == limit and len({p["prompt"] for p in picked}) == limit
        assert {p["type"] for p in picked} == {"none", "about"}


def test_shipped_open_and_mixed_files():
    data = heldout.shipped_data("eval_open_en.jsonl").parent
    open_en = heldout.load_prompts(data / "eval_open_en.jsonl")
    assert len(open_en) >= 16 and all(heldout.is_open(r) for r in open_en)
    seeds = {json.loads(line)["prompt"].strip().lower() for line in (data / "seeds_en.jsonl").read_text().splitlines()
             if line.strip()}
    assert not {r["prompt"].lower() for r in open_en} & seeds  # held out from the seed prompts
    for lang in ("en", "zh"):
        mixed = heldout.load_prompts(data / f"eval_mixed_{lang}.jsonl")
        parts = [*heldout.load_prompts(data / f"eval_{lang}.jsonl"),
                 *heldout.load_prompts(data / f"eval_open_{lang}.jsonl")]
        assert sorted(map(json.dumps, mixed)) == sorted(map(json.dumps, parts))
        two = heldout.load_prompts(data / f"eval_mixed_{lang}.jsonl", 2)
        assert {heldout.is_open(r) for r in two} == {True, False}  # a tiny limit still covers both groups


def test_the_table_shows_both_groups_and_old_results():
    from rich.console import Console

    new = heldout.aggregate([{"type": "none", "words": 412, "passes_filter": True, "length_score": None, "s_l": None},
                              {"type": "about", "target": 10, "words": 10, "passes_filter": True,
                               "length_score": 1.0, "s_l": 100.0}])
    old = {"n": 4, "mean_words": 120.0, "median_words": 110.0, "repetition_pass_rate": 0.5, "length_score": 0.5,
           "s_l": 50.0}  # a result from before open prompts, or the report's cut-down numbers
    console = Console(width=200, record=True)
    console.print(heldout.table({0: old, 1: new}))
    out = console.export_text()
    assert "open" in out and "constr." in out and "412" in out and "100.0" in out and "–" in out
    narrow = Console(width=80, record=True)
    narrow.print(heldout.table({0: old, 1: new}))
    assert "…" not in narrow.export_text()  # fits a plain terminal: no header cut short


@dataclasses.dataclass(frozen=True)
class Ev:
    every_round: object = False
    prompt_file: object = None
    max_new_tokens: object = 1024
    limit: object = None


@pytest.mark.parametrize("field, value", [("limit", 0), ("limit", -1), ("limit", 2.5), ("limit", "abc"),
                                          ("limit", True), ("max_new_tokens", 0), ("max_new_tokens", "many"),
                                          ("every_round", "yes"), ("prompt_file", "")])
def test_invalid_eval_settings_are_one_config_error(field, value):
    with pytest.raises(ConfigError) as err:
        heldout.check_eval_settings(Ev(**{field: value}))
    assert f"eval.{field}=" in str(err.value) and "Fix:" in str(err.value)


def test_valid_eval_settings_pass():
    heldout.check_eval_settings(Ev())
    heldout.check_eval_settings(Ev(limit=1, max_new_tokens=1, every_round=True, prompt_file="x.jsonl"))


def test_adapter_identity_is_relative_and_follows_the_weights(tmp_path):
    run = tmp_path / "run"
    adapter = run / "round_001" / "train" / "generator" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    (adapter / "README.md").write_text("model card")
    a = heldout.adapter_identity(run, str(adapter))
    assert a["path"] == "round_001/train/generator/adapter"
    assert heldout.adapter_identity(run, "round_001/train/generator/adapter") == a  # relative to the run folder
    (adapter / "README.md").write_text("another card")
    assert heldout.adapter_identity(run, str(adapter)) == a  # no weights changed
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-2")
    assert heldout.adapter_identity(run, str(adapter))["sha256"] != a["sha256"]
    assert heldout.adapter_identity(run, None) is None
