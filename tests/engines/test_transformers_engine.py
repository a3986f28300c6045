"""TransformersEngine mechanics on a tiny random Llama: rendering, batching, order, stops, seeds, adapters.

The conftest model's weights are so small that greedy decoding repeats one token for every prompt, which
would make order and adapter checks vacuous; `lively_dir` (conftest) re-draws its weights larger so that different
prompts (and different adapters) give visibly different nonsense.
"""

from __future__ import annotations


import pytest

from selflengthen.engines import make_engine
from selflengthen.engines.base import Request, SamplingParams, render_prompt
from selflengthen.engines.transformers_engine import TransformersEngine

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)
SAMPLED = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, max_new_tokens=8, seed=3)


def chat(id: str, text: str, params: SamplingParams = GREEDY, **kw) -> Request:
    return Request.chat(id, [("user", text)], params, **kw)


TOPICS = ["the printing press", "city traffic " * 6, "a story", "the budget and the risks of the project " * 3,
          "yes", "paragraph one explains the idea"]


@pytest.fixture(scope="module")
def engine(lively_dir):
    eng = TransformersEngine(str(lively_dir), dtype="float32", batch_size=4, threads=1)
    eng.load()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def adapters(lively_dir, tmp_path_factory) -> dict:
    """Four different random LoRA adapters: round 1 and round 2, generator and extender."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, name in enumerate(["g1", "e1", "g2", "e2"]):
        torch.manual_seed(100 + seed)
        base = AutoModelForCausalLM.from_pretrained(lively_dir, dtype=torch.float32)
        cfg = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        folder = tmp_path_factory.mktemp(f"adapter_{name}")
        get_peft_model(base, cfg).save_pretrained(folder)
        out[name] = str(folder)
    return out


def test_make_engine_passes_config_through(lively_dir):
    eng = make_engine({"name": "transformers", "dtype": "float32", "batch_size": 3}, str(lively_dir))
    assert isinstance(eng, TransformersEngine) and eng.batch_size == 3 and eng.model is None


def test_make_engine_rejects_unknown_names():
    with pytest.raises(ValueError, match="engine.name"):
        make_engine({"name": "nope"}, "x")


def test_bad_dtype_is_a_config_error():
    with pytest.raises(ValueError, match="engine.dtype"):
        TransformersEngine("x", dtype="fp8")


def test_chat_and_completion_in_order_and_batch_independent(engine):
    """Mixed lengths, chat and completion, shuffled: each answer equals the same request run alone."""
    reqs = [chat(f"c{i}", f"Write an essay about {t}") for i, t in enumerate(TOPICS)]
    reqs.insert(2, Request.completion("p", "Instruction 1: Write a story. Instruction 2:", GREEDY))
    seen = []
    got = engine.generate(reqs, progress=seen.append)
    assert seen == [1] * len(reqs)  # the slot loop reports each request as it finishes
    alone = [engine.generate([r])[0] for r in reqs]
    assert got == alone
    assert len(set(got)) == len(got) and all(got)


def test_greedy_is_batch_size_independent_and_deterministic(lively_dir, engine):
    reqs = [chat(f"c{i}", f"Tell me about {t}") for i, t in enumerate(TOPICS)]
    one = TransformersEngine(str(lively_dir), dtype="float32", batch_size=1)
    one.load()
    assert engine.generate(reqs) == one.generate(reqs) == engine.generate(reqs)


def test_stats_count_tokens(lively_dir):
    eng = TransformersEngine(str(lively_dir), dtype="float32", batch_size=2)
    eng.load()
    reqs = [chat("a", "hello"), chat("b", "a story")]
    eng.generate(reqs)
    s = eng.stats
    assert s.requests == 2 and s.seconds > 0 and 0 < s.new_tokens <= 2 * GREEDY.max_new_tokens
    assert s.prompt_tokens == sum(len(eng.tokenizer(render_prompt(eng.tokenizer, r))["input_ids"]) for r in reqs)


def test_assistant_prefix_is_continued(engine):
    prefix = "Paragraph one explains"
    req = chat("x", "Write a report", assistant_prefix=prefix)
    rendered = render_prompt(engine.tokenizer, req)
    assert rendered.endswith("<|im_start|>assistant\n" + prefix)
    # The engine continues exactly that text: same answer as a raw completion of the rendered prompt.
    assert engine.generate([req]) == engine.generate([Request.completion("y", rendered, GREEDY)])
    assert engine.generate([req]) != engine.generate([chat("z", "Write a report")])


def test_stop_strings_cut_each_answer(engine):
    long = SamplingParams(temperature=0.0, max_new_tokens=16)
    free = engine.generate([chat("a", "a story", long), chat("b", "the budget", long)])
    # Stop at a piece of the first answer; the second answer (same batch) is cut only where it contains it.
    text = free[0]
    word = next(text[k:k + 2] for k in range(2, len(text)) if text[k:k + 2].isascii() and text[k:k + 2].isalpha())
    stop = SamplingParams(temperature=0.0, max_new_tokens=16, stop=(word,))
    before = engine.stats.new_tokens
    got = engine.generate([chat("a", "a story", stop), chat("b", "the budget", stop)])
    if word not in free[1]:  # generation itself stopped early (transformers' stop_strings), not just the text
        assert engine.stats.new_tokens - before < 16 + 16
    for full, cut in zip(free, got):
        assert cut == (full[:full.find(word)] if word in full else full)
    assert word not in got[0] and len(got[0]) < len(free[0])


def test_max_batch_tokens_caps_batches(lively_dir, engine):
    reqs = [chat(f"c{i}", f"Write about {t}") for i, t in enumerate(TOPICS)]
    capped = TransformersEngine(str(lively_dir), dtype="float32", batch_size=16, max_batch_tokens=120)
    capped.load()
    seen = []
    assert capped.generate(reqs, progress=seen.append) == engine.generate(reqs)
    assert len(seen) > 1 and max(seen) < len(reqs)


def test_mixed_sampling_params_in_one_call(engine):
    short = SamplingParams(temperature=0.0, max_new_tokens=3)
    reqs = [chat("a", "a story"), chat("b", "a story", short), chat("c", "the budget", SAMPLED)]
    got = engine.generate(reqs)
    assert got[0] == engine.generate([reqs[0]])[0]
    assert got[1] == engine.generate([reqs[1]])[0] and got[0].startswith(got[1])


def test_seeded_sampling_repeats(lively_dir, engine):
    reqs = [chat("a", "a story", SAMPLED), chat("b", "the budget", SAMPLED)]
    assert engine.generate(reqs) == engine.generate(reqs)
    static = TransformersEngine(str(lively_dir), dtype="float32", batch_size=4, loop="static")
    static.load()  # model.generate seeds a batch from its first request: repeatable for the same batch
    assert static.generate(reqs) == static.generate(reqs)


def test_adapters_roles_rounds_and_base(lively_dir, adapters):
    eng = TransformersEngine(str(lively_dir), dtype="float32", batch_size=4)
    eng.load()
    prompt = "Write an essay about the printing press"
    base_before = eng.generate([chat("b", prompt)])
    eng.set_adapters({"generator": None, "extender": None})  # round 1: nothing loaded, plain model
    assert not hasattr(eng.model, "peft_config")

    eng.set_adapters({"generator": adapters["g1"], "extender": adapters["e1"]})
    mixed = [chat("b", prompt), chat("g", prompt, adapter="generator"), chat("e", prompt, adapter="extender"),
             chat("b2", prompt)]
    base, gen1, ext1, base2 = eng.generate(mixed)
    assert [base] == [base2] == base_before == eng.generate([chat("b", prompt)])
    assert len({base, gen1, ext1}) == 3

    # Round 2: new folders replace the old adapters (no name clash, old ones unloaded).
    eng.set_adapters({"generator": adapters["g2"], "extender": adapters["e2"]})
    assert len(eng.model.peft_config) == 2
    base, gen2, ext2, _ = eng.generate(mixed)
    assert [base] == base_before and len({base, gen1, ext1, gen2, ext2}) == 5

    # Only a generator: an extender request falls back to the base model.
    eng.set_adapters({"generator": adapters["g2"], "extender": None})
    assert eng.generate([chat("g", prompt, adapter="generator"), chat("e", prompt, adapter="extender")]) == \
        [gen2, base]

    eng.set_adapters({"generator": None, "extender": None})
    assert not hasattr(eng.model, "peft_config") and eng.generate([chat("b", prompt)]) == base_before


def test_release_frees_the_weights_and_generate_reloads_them(lively_dir, adapters):
    eng = TransformersEngine(str(lively_dir), dtype="float32", batch_size=4)
    eng.load()
    eng.set_adapters({"generator": adapters["g1"], "extender": None})
    prompt = "Write an essay about the printing press"
    reqs = [chat("g", prompt, adapter="generator"), chat("b", prompt)]
    before = eng.generate(reqs)
    eng.release()
    assert eng.model is None  # the trainer gets the memory
    assert eng.generate(reqs) == before  # reloaded with the same adapters
    eng.release()
    eng.set_adapters({"generator": adapters["g2"], "extender": None})  # next round's, set while released
    g2, base = eng.generate(reqs)
    assert base == before[1] and g2 != before[0]
    eng.close()
    with pytest.raises(RuntimeError):
        eng.generate(reqs)  # closed is closed: no silent reload


# ---- the real embedded model ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded_engine():
    from selflengthen.engines.models import EMBEDDED, resolve_model_path

    eng = TransformersEngine(resolve_model_path(EMBEDDED), batch_size=4)
    eng.load()
    yield eng
    eng.close()


@pytest.mark.slow
def test_embedded_model_answers_in_english(embedded_engine):
    params = SamplingParams(temperature=0.0, max_new_tokens=48)
    text = embedded_engine.generate([chat("sea", "Write two sentences about the sea.", params)])[0]
    words = text.split()
    assert len(words) >= 5 and "<|im_end|>" not in text
    assert sum(w.strip(".,;:!?'\"").isalpha() for w in words) / len(words) > 0.7
    assert "sea" in text.lower() or "ocean" in text.lower()


@pytest.mark.slow
def test_embedded_model_lora_changes_the_answer(embedded_engine, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded_engine.model_path, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(tmp_path / "gen")
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    reqs = [chat("b", "Write two sentences about the sea.", params),
            chat("g", "Write two sentences about the sea.", params, adapter="generator")]
    before = embedded_engine.generate(reqs[:1])
    embedded_engine.set_adapters({"generator": str(tmp_path / "gen"), "extender": None})
    base_text, gen_text = embedded_engine.generate(reqs)
    embedded_engine.set_adapters({"generator": None, "extender": None})
    assert [base_text] == before and gen_text != base_text


@pytest.mark.parametrize("loop", ["slots", "static"])
def test_min_new_tokens_holds_back_the_end_of_sequence_per_request(lively_dir, monkeypatch, loop):
    """A request's min_new_tokens bans the end-of-sequence tokens until it has that many new tokens; other
    requests in the same stream may still stop at once. The greedy first token is declared an eos token so
    that, without a floor, the answer is empty."""
    eng = TransformersEngine(str(lively_dir), dtype="float32", batch_size=4, threads=1, loop=loop)
    eng.load()
    try:
        import torch

        free = chat("free", TOPICS[0], SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12))
        held = chat("held", TOPICS[0], SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12,
                                                      min_new_tokens=6))
        with torch.no_grad():
            first = int(eng.model(torch.tensor([eng._encode(free)])).logits[0, -1].argmax())
        monkeypatch.setattr(eng, "_eos_ids", lambda: [first])
        before = eng.stats.new_tokens
        texts = eng.generate([free]) + eng.generate([held])
        assert texts[0] == ""  # stopped at its first token
        assert texts[1] != "" and eng.stats.new_tokens - before >= 6
    finally:
        eng.close()
