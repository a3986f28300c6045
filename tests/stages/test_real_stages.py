"""Stages of a round driven by the real embedded model (`./run.sh test-slow`, a few minutes on 2 cores)."""

from __future__ import annotations

import pytest

from conftest import compose
from selflengthen.engines import session
from selflengthen.settings import Settings
from selflengthen.stages import extend, initial, self_instruct
from selflengthen.stages.common import RoundContext
from selflengthen.runfolder.store import read_jsonl
from selflengthen.writing.text import count_words

pytestmark = pytest.mark.slow

SMALL = ["iterations=1", "self_instruct.num_new=2", "self_instruct.per_wave=4", "self_instruct.max_waves=1",
         "self_instruct.max_new_tokens=40", "generate.samples=2", "generate.max_attempts=3",
         # budgets the base model's answers end within: an answer the budget cuts is re-drawn, never kept
         "generate.max_new_tokens=768", "extend.samples=1", "extend.passes=1",
         "extend.max_attempts=2", "extend.max_new_tokens=1024",
         "sampling.a=0"]  # keep every passing answer: the assertions below must have rows to look at


def test_self_instruct_initial_and_extend_with_the_embedded_model(tmp_path):
    s = Settings.from_config(compose(*SMALL), tmp_path)
    engine, _ = session.for_settings(s)
    ctx = RoundContext(s, 1, engine, {"generator": None, "extender": None})
    try:
        si = self_instruct.run(ctx)
        ini = initial.run(ctx)
        ext = extend.run(ctx)
    finally:
        engine.close()
    assert si["instructions"] == 2 and si["proposed"] == 4
    proposals = read_jsonl(tmp_path / "round_001/self_instruct/candidates.jsonl")
    assert all(p["reason"] or p["judge"] for p in proposals)  # every kept proposal went through the judge
    assert ini["items"] == 4 and ini["passed"] >= 1  # real answers pass the filter
    responses = read_jsonl(tmp_path / "round_001/initial/responses.jsonl")
    assert len(responses) == ini["kept"] >= 1  # sized so the loop below is never vacuous
    for row in responses:
        assert count_words(row["text"]) > 20 and row["text"].rstrip()[-1] in ".!?\"'”’)…"
    passes = read_jsonl(tmp_path / "round_001/extend/passes.jsonl")
    assert len(passes) >= ini["kept"]  # one pass record per item (plus its final record)
    extended = read_jsonl(tmp_path / "round_001/extend/extended.jsonl")
    assert extended, f"no extension grew enough: {ext}"  # a tiny run that keeps nothing proves nothing
    for row in extended:
        assert row["words"] > row["initial_words"]  # a kept extension really is longer
    assert ext["items"] == ini["kept"]
