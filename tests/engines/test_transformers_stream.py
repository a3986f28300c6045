"""TransformersEngine.stream, the slot loop: every request once, refills, per-request params and seeds,
batch independence, adapters in one stream — on a tiny random Llama (float32), plus the embedded model (slow).

The conftest model is re-drawn with larger weights (as in tests/engines/test_transformers_engine.py) so that prompts,
seeds and adapters give visibly different nonsense.
"""

from __future__ import annotations

from pathlib import Path


import pytest

from selflengthen.engines.base import Completion, Request, RequestQueue, SamplingParams, render_prompt
from selflengthen.engines.transformers_engine import TransformersEngine

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=10)
SAMPLED = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, max_new_tokens=10, seed=7)
TOPICS = ["the printing press", "city traffic " * 6, "a story", "the budget and the risks of the project " * 3,
          "yes", "paragraph one explains the idea", "Instruction 1: Write a story."]


def chat(id: str, text: str, params: SamplingParams = GREEDY, **kw) -> Request:
    return Request.chat(id, [("user", text)], params, **kw)


def essays(params: SamplingParams = GREEDY, **kw) -> list[Request]:
    return [chat(f"c{i}", f"Write an essay about {t}", params, **kw) for i, t in enumerate(TOPICS)]


def drain(engine: TransformersEngine, reqs) -> dict[str, Completion]:
    out: dict[str, Completion] = {}
    for c in engine.stream(RequestQueue(reqs)):
        assert c.id not in out
        out[c.id] = c
    return out


def make(lively_dir, batch_size: int = 3, **kw) -> TransformersEngine:
    eng = TransformersEngine(str(lively_dir), dtype="float32", batch_size=batch_size, threads=1, **kw)
    eng.load()
    return eng


@pytest.fixture(scope="module")
def engine(lively_dir):
    eng = make(lively_dir)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def lora_dirs(lively_dir, tmp_path_factory) -> dict[str, str]:
    """Two random LoRA adapters (nonzero B, so they change the answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, name in enumerate(["gen", "ext"]):
        torch.manual_seed(200 + seed)
        base = AutoModelForCausalLM.from_pretrained(lively_dir, dtype=torch.float32)
        cfg = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        folder = tmp_path_factory.mktemp(f"stream_adapter_{name}")
        get_peft_model(base, cfg).save_pretrained(folder)
        out[name] = str(folder)
    return out


def test_stream_yields_every_request_once_with_counts(engine):
    reqs = essays()
    got = drain(engine, reqs)
    assert set(got) == {r.id for r in reqs}
    for r in reqs:
        c = got[r.id]
        assert c.prompt_tokens == len(engine.tokenizer(render_prompt(engine.tokenizer, r))["input_ids"])
        assert 0 < c.new_tokens <= GREEDY.max_new_tokens and c.text
        assert c.finish_reason == ("length" if c.new_tokens == GREEDY.max_new_tokens else "stop")


def test_a_request_added_during_the_stream_is_served(engine):
    queue = RequestQueue(essays()[:2])
    seen = []
    for c in engine.stream(queue):
        seen.append(c.id)
        if c.id == "c0":
            queue.add(chat("late", "Write an essay about a story"))
    assert sorted(seen) == ["c0", "c1", "late"]
    assert seen[-1] == "late"  # queued after c0 finished, so it ends last


def test_a_request_cancelled_in_flight_is_dropped_and_its_slot_refilled(engine):
    """The consumer withdraws a request that is decoding: it never completes, its row goes to the next queued
    request, and the others' answers are unchanged."""
    short = SamplingParams(temperature=0.0, max_new_tokens=3)
    reqs = [chat("quick", "yes", short)] + essays(SamplingParams(temperature=0.0, max_new_tokens=40))[:3]
    alone = {r.id: engine.generate([r])[0] for r in reqs}
    queue = RequestQueue(reqs)  # batch 3: quick, c0 and c1 decode; c2 waits for a slot
    seen = []
    for c in engine.stream(queue):
        seen.append(c.id)
        assert c.text == alone[c.id]
        if c.id == "quick":
            assert queue.cancel("c0") is False  # in flight: marked, then dropped by the engine
    assert sorted(seen) == ["c1", "c2", "quick"]
    assert not queue.cancelled


def test_greedy_stream_equals_generate_and_each_request_alone(lively_dir, engine):
    reqs = essays()
    streamed = drain(engine, reqs)
    batch = engine.generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    assert [streamed[r.id].text for r in reqs] == batch == alone
    assert len(set(batch)) == len(batch)
    wide = make(lively_dir, batch_size=16)  # every request in flight at once
    assert wide.generate(reqs) == batch


def test_slot_loop_matches_model_generate(lively_dir, engine):
    """Our decode loop (keys/values, rotary positions, repetition penalty) against transformers' generate."""
    reqs = essays(SamplingParams(temperature=0.0, max_new_tokens=16, repetition_penalty=1.3))
    static = make(lively_dir, batch_size=1, loop="static")
    assert engine.generate(reqs) == static.generate(reqs)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral"])
def test_slot_loop_matches_model_generate_for_each_family(tiny_model_dir, tmp_path, family):
    """The slot loop has its own norm, rotary and attention code: every family it claims must decode exactly
    as transformers does (qwen3 adds per-head query/key norms; qwen2 biases on q/k/v)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base = AutoConfig.from_pretrained(tiny_model_dir)
    cfg = AutoConfig.for_model(family, vocab_size=base.vocab_size, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               max_position_embeddings=4096, bos_token_id=base.bos_token_id,
                               eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id,
                               sliding_window=None, use_sliding_window=False, tie_word_embeddings=True)
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.25) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    for f in Path(tiny_model_dir).iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, tmp_path)
    slots = make(tmp_path, batch_size=3)
    assert slots.model.config.model_type == family and slots._use_slots()
    reqs = essays(SamplingParams(temperature=0.0, max_new_tokens=12, repetition_penalty=1.2))
    static = make(tmp_path, batch_size=1, loop="static")
    got = slots.generate(reqs)
    assert got == static.generate(reqs)
    assert len(set(got)) > 1  # the answers differ, so the comparison says something


def test_sampled_request_is_its_own_seed_whatever_the_batch(lively_dir, engine):
    target = chat("t", "Write an essay about the budget", SAMPLED)
    alone = engine.generate([target])[0]
    others = essays(SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=12, seed=1))
    assert drain(engine, others[:2] + [target] + others[2:])["t"].text == alone
    assert make(lively_dir, batch_size=8).generate(others + [target])[-1] == alone
    reseeded = chat("t", "Write an essay about the budget", SamplingParams(**{**SAMPLED.__dict__, "seed": 8}))
    assert engine.generate([reseeded])[0] != alone
    # top_k=1 sampling is greedy, whatever the seed
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    top1 = SamplingParams(temperature=0.9, top_k=1, max_new_tokens=10, seed=5)
    assert engine.generate([chat("a", "a story", top1)]) == engine.generate([chat("a", "a story", greedy)])


def test_per_request_budget_and_stop_strings(engine):
    free = drain(engine, [chat("a", "a story", SamplingParams(temperature=0.0, max_new_tokens=16))])["a"]
    text = free.text
    word = next(text[k:k + 2] for k in range(3, len(text)) if text[k:k + 2].isascii() and text[k:k + 2].isalpha())
    reqs = [chat("a", "a story", SamplingParams(temperature=0.0, max_new_tokens=16, stop=(word,))),
            chat("b", "a story", SamplingParams(temperature=0.0, max_new_tokens=3)),
            chat("c", "the budget", SamplingParams(temperature=0.0, max_new_tokens=16))]
    got = drain(engine, reqs)
    assert got["a"].text == text[:text.find(word)] and got["a"].finish_reason == "stop"
    assert got["a"].new_tokens < free.new_tokens  # it stopped generating, not only cut the text
    assert got["b"].new_tokens == 3 and got["b"].finish_reason == "length" and text.startswith(got["b"].text)
    assert got["c"].new_tokens == 16


def test_max_batch_tokens_bounds_the_rows_in_flight(lively_dir, engine):
    reqs = essays()
    capped = make(lively_dir, batch_size=16, max_batch_tokens=90)
    assert capped.generate(reqs) == engine.generate(reqs)
    assert capped.stats.extra["decode_rows"] / capped.stats.extra["decode_steps"] < 3


def test_adapters_in_one_stream(lively_dir, lora_dirs):
    eng = make(lively_dir, batch_size=4)
    prompt = "Write an essay about the printing press"
    base_alone = eng.generate([chat("b", prompt)])[0]
    eng.set_adapters({"generator": lora_dirs["gen"], "extender": lora_dirs["ext"], "writer": None})
    mixed = [chat("b", prompt), chat("g", prompt, adapter="generator"), chat("e", prompt, adapter="extender"),
             chat("w", prompt, adapter="writer"), chat("g2", "a story", adapter="generator")]
    got = drain(eng, mixed)
    assert got["b"].text == base_alone == got["w"].text  # base, and a name with no folder: no adapter at all
    assert len({got["b"].text, got["g"].text, got["e"].text}) == 3
    for r in mixed:  # each equals the same request alone
        assert eng.generate([r])[0] == got[r.id].text
    eng.set_adapters({"generator": None, "extender": None})
    assert eng.generate([chat("b", prompt)])[0] == base_alone


def test_static_loop_still_serves_stream(lively_dir, engine):
    static = make(lively_dir, loop="static")
    reqs = essays()
    assert {c.id: c.text for c in static.stream(RequestQueue(reqs))} == {r.id: t for r, t in
                                                                         zip(reqs, engine.generate(reqs))}


def test_static_loop_says_why_each_answer_ended(lively_dir, engine):
    """The static loop reports finish reasons as the slot loop does: "stop" for a stop string or the end token,
    "length" for a row that ran to its budget."""
    static = make(lively_dir, loop="static")
    text = engine.generate([chat("a", "a story", SamplingParams(temperature=0.0, max_new_tokens=16))])[0]
    word = next(text[k:k + 2] for k in range(2, len(text)) if text[k:k + 2].isascii() and text[k:k + 2].isalpha())
    reqs = [chat("a", "a story", SamplingParams(temperature=0.0, max_new_tokens=16, stop=(word,))),
            chat("b", "a story", SamplingParams(temperature=0.0, max_new_tokens=3))]
    got = {c.id: c for c in static.stream(RequestQueue(reqs))}
    assert got["a"].text == text[:text.find(word)] and got["a"].finish_reason == "stop"
    assert got["b"].new_tokens == 3 and got["b"].finish_reason == "length"
    assert [c.finish_reason for c in static.complete_static(reqs)] == ["stop", "length"]


def test_bad_loop_is_a_config_error():
    with pytest.raises(ValueError, match="engine.loop"):
        TransformersEngine("x", loop="waves")


# ---- the real embedded model ---------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_model_stream_matches_generate_and_seeds():
    from selflengthen.engines.models import EMBEDDED, resolve_model_path

    path = resolve_model_path(EMBEDDED)
    eng = TransformersEngine(path, dtype="float32", batch_size=4)
    eng.load()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=32)
    reqs = [chat("sea", "Write two sentences about the sea.", greedy),
            chat("moon", "Write two sentences about the moon.", greedy)]
    slots = eng.generate(reqs)
    static = TransformersEngine(path, dtype="float32", batch_size=1, loop="static")
    static.load()
    assert slots == static.generate(reqs)
    assert "sea" in slots[0].lower() or "ocean" in slots[0].lower()
    paper = SamplingParams(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.1, max_new_tokens=48, seed=3)
    target = chat("t", "Write a short poem about rain.", paper)
    alone = eng.generate([target])[0]
    assert eng.generate(reqs + [target])[-1] == alone and len(alone.split()) > 5


def test_key_value_rows_grow_with_the_requests_in_flight(lively_dir):
    """A large batch_size costs memory only when that many requests decode at once: rows are allocated as
    requests arrive, and the answers equal a small engine's."""
    import torch

    from selflengthen.engines.transformers_engine import _ROW_STEP, _SlotDecoder

    wide = make(lively_dir, batch_size=4 * _ROW_STEP)
    dec = _SlotDecoder(wide)
    reqs = essays(SamplingParams(temperature=0.0, max_new_tokens=64))
    with torch.inference_mode():
        for r in reqs[:3]:
            dec.admit(r, wide._encode(r))
        assert dec.K.shape[1] == _ROW_STEP < wide.batch_size
        for i in range(_ROW_STEP):
            r = chat(f"more{i}", f"Write an essay about {TOPICS[i % len(TOPICS)]}", reqs[0].params)
            dec.admit(r, wide._encode(r))
        assert dec.K.shape[1] == 2 * _ROW_STEP
    small = make(lively_dir, batch_size=2)
    assert wide.generate(reqs) == small.generate(reqs)
