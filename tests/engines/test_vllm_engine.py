"""VllmEngine on the real embedded model, with real vLLM (`./run.sh test-vllm`; skipped when vLLM is absent).

One engine serves the whole session: vLLM takes 20-90 s to start on this CPU. It runs with
enforce_eager=True (greedy output then does not depend on what else is in the batch) and float32 (so the
comparisons with transformers are exact, not bf16-rounding-close). Two random, clearly non-zero LoRA
adapters stand in for the generator and the extender.
"""

from __future__ import annotations

import pytest

from conftest import random_adapters
from selflengthen.engines.base import Request, SamplingParams, render_prompt

pytestmark = pytest.mark.vllm

GREEDY = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=24)
SEA = [("user", "Write a short poem about the sea.")]
FRUIT = [("user", "List three fruits, one per line.")]
TRAINS = [("user", "Explain in two sentences how a steam train works.")]


@pytest.fixture(scope="session")
def model_path() -> str:
    from selflengthen.engines.models import EMBEDDED, resolve_model_path

    return resolve_model_path(EMBEDDED)


@pytest.fixture(scope="session")
def adapters(model_path, tmp_path_factory) -> dict[str, str]:
    return random_adapters(model_path, tmp_path_factory)


@pytest.fixture(scope="session")
def engine(model_path):
    pytest.importorskip("vllm")
    from selflengthen.engines.vllm_engine import VllmEngine

    eng = VllmEngine(model_path, dtype="float32", cpu_kvcache_space_gib=1, max_model_len=2048,
                     enforce_eager=True, max_lora_rank=16, max_loras=2, seed=0)
    eng.load()
    yield eng
    eng.close()


def chat(id, messages, adapter=None, params=GREEDY, prefix=""):
    return Request.chat(id, messages, params, adapter=adapter, assistant_prefix=prefix)


def test_base_chat_generation_keeps_order_and_stops(engine):
    engine.set_adapters({"generator": None, "extender": None})
    stop_nl = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=48, stop=("\n",))
    reqs = [chat("sea", SEA), chat("fruit", FRUIT, params=stop_nl), chat("trains", TRAINS)]
    seen = []
    out = engine.generate(reqs, progress=seen.append)
    assert all(t.strip() for t in out), out
    assert "\n" not in out[1]  # the stop string ends the answer and is not part of it
    assert sum(seen) == len(reqs)
    assert engine.generate(list(reversed(reqs))) == list(reversed(out))  # answers follow request order
    # a raw completion prompt works too
    done = engine.generate([Request.completion("c", "The capital of France is", GREEDY)])
    assert done[0].strip()


def test_two_adapters_in_one_call_differ_and_match_each_alone(engine, adapters):
    engine.set_adapters(adapters)
    base = engine.generate([chat("b", SEA)])[0]
    gen, ext = engine.generate([chat("g", SEA, "generator"), chat("e", SEA, "extender")])
    assert len({base, gen, ext}) == 3, (base, gen, ext)
    assert engine.generate([chat("g", SEA, "generator")]) == [gen]
    assert engine.generate([chat("e", SEA, "extender")]) == [ext]


def test_base_request_in_mixed_call_equals_base_alone(engine, adapters):
    """The upstream CPU bug: base tokens batched with adapter tokens got the last slot's adapter."""
    engine.set_adapters(adapters)
    alone = engine.generate([chat("b1", SEA), chat("b2", TRAINS)])
    drains = engine.stats.extra.get("guard_drains", 0)
    mixed = engine.generate([chat("g", SEA, "generator"), chat("b1", SEA), chat("e", TRAINS, "extender"),
                             chat("b2", TRAINS)])
    assert [mixed[1], mixed[3]] == alone
    assert engine.stats.extra["guard_drains"] > drains


def test_stream_takes_requests_added_while_it_runs(engine, adapters):
    """The stream contract: a request queued between two completions (a chain's next step) is served by the
    same stream, and a base request queued while adapter requests run still gets the base model's answer."""
    from selflengthen.engines.base import RequestQueue

    engine.set_adapters(adapters)
    alone = engine.generate([chat("b", TRAINS)])[0]
    queue = RequestQueue([chat("g", SEA, "generator"), chat("e", FRUIT, "extender")])
    got = {}
    for c in engine.stream(queue):
        got[c.id] = c.text
        if c.id in ("g", "e") and "b" not in got and len(got) == 1:
            queue.add(chat("b", TRAINS))  # queued mid-stream, of the other kind
        assert c.new_tokens > 0
    assert set(got) == {"g", "e", "b"} and got["b"] == alone


def test_role_without_folder_runs_on_base(engine, adapters):
    engine.set_adapters({"generator": None, "extender": adapters["extender"]})
    base, gen = engine.generate([chat("b", SEA), chat("g", SEA, "generator")])
    assert gen == base


def test_new_folder_for_a_role_gets_a_new_adapter(engine, adapters):
    """Round 2's adapter must not be served from vLLM's cache of round 1's (ids are per folder)."""
    engine.set_adapters({"generator": adapters["generator"]})
    first = engine.generate([chat("g", SEA, "generator")])
    engine.set_adapters({"generator": adapters["extender"]})
    second = engine.generate([chat("g", SEA, "generator")])
    assert first != second
    assert second == engine.generate([chat("e", SEA, "extender")])


def test_assistant_prefix_is_continued(engine):
    engine.set_adapters({"generator": None, "extender": None})
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=40)
    full = engine.generate([chat("full", SEA, params=params)])[0]
    cut = full.index(" ", len(full) // 3)  # a word boundary a third of the way in
    prefix = full[:cut]
    rest = engine.generate([chat("rest", SEA, params=params, prefix=prefix)])[0]
    assert not rest.startswith(prefix)  # the continuation only, not the prefix again
    assert (prefix + rest).startswith(full[: cut + 15])  # greedy goes on exactly where it was


def test_matches_transformers_and_peft_greedy(engine, adapters, model_path):
    """Same token ids in, same greedy tokens out as plain transformers (base) and transformers+peft."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    engine.set_adapters(adapters)
    prompt = render_prompt(engine.tokenizer, chat("x", TRAINS))
    ids = torch.tensor([engine.tokenizer.encode(prompt, add_special_tokens=False)])

    def hf_greedy(model) -> str:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
        return engine.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    got = engine.generate([chat("b", TRAINS), chat("g", TRAINS, "generator"), chat("e", TRAINS, "extender")])
    assert got[0] == hf_greedy(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32))
    for role, text in zip(("generator", "extender"), got[1:]):
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        assert text == hf_greedy(PeftModel.from_pretrained(base, adapters[role])), role


def test_matches_transformers_engine_greedy(engine, model_path):
    mod = pytest.importorskip("selflengthen.engines.transformers_engine")
    engine.set_adapters({"generator": None, "extender": None})
    reqs = [chat("sea", SEA), chat("trains", TRAINS)]
    hf = mod.TransformersEngine(model_path, dtype="float32", batch_size=2)
    hf.load()
    try:
        expected = hf.generate(reqs)
    finally:
        hf.close()
    assert engine.generate(reqs) == expected


def test_release_then_generate_again(engine, adapters):
    """On the CPU release() shuts vLLM down (worker processes included); generate() starts it again."""
    engine.set_adapters(adapters)
    reqs = [chat("b", SEA), chat("g", SEA, "generator")]
    before = engine.generate(reqs)
    starts = engine.stats.extra["starts"]
    engine.release()
    assert engine.generate(reqs) == before
    assert engine.stats.extra["starts"] == starts + (1 if engine.release_mode == "shutdown" else 0)
