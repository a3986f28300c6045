"""vLLM's own data parallelism (`engine.data_parallel_size=2`: one AsyncLLM over two engine-core replicas) on
this CPU, for real (`./run.sh test-vllm`; needs vLLM).

The model is the conftest tiny Llama at a size vLLM's CPU attention takes (head size 64) with its weights
re-drawn larger, so that answers differ from prompt to prompt and from adapter to adapter; two random LoRA
adapters. Every engine runs with enforce_eager and float32, so greedy and seeded answers do not depend on the
batch or on which replica serves them: two replicas must answer exactly as one does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, build_tiny_model, liven, random_adapters
from selflengthen.engines.base import Request, SamplingParams

pytestmark = pytest.mark.vllm

ENGINE = dict(dtype="float32", cpu_kvcache_space_gib=0.25, max_model_len=512, enforce_eager=True, max_lora_rank=8,
              max_loras=2, seed=0)
GREEDY = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12)
SAMPLED = SamplingParams(temperature=0.9, top_p=0.95, top_k=0, repetition_penalty=1.0, max_new_tokens=12, seed=7)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("vllm_tiny"), hidden_size=128, intermediate_size=256,
                              num_attention_heads=2, num_key_value_heads=1)
    net = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    liven(net)
    net.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def adapters(model, tmp_path_factory) -> dict[str, str]:
    return random_adapters(model, tmp_path_factory)


def requests() -> list[Request]:
    topics = ["the sea", "a market", "trains", "a garden", "the moon", "bread"]
    out = []
    for i, topic in enumerate(topics):
        for adapter in (None, "generator", "extender"):
            params = GREEDY if i % 2 else SAMPLED
            out.append(Request.chat(f"{topic}-{adapter}", [("user", f"Write about {topic}.")], params, adapter=adapter))
    return out


def engine_processes() -> dict[int, str]:
    """vLLM's processes under this one (engine cores, the DP coordinator: their titles say VLLM), by pid."""
    import psutil

    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            title = " ".join([p.name(), *p.cmdline()])
        except psutil.Error:
            continue
        if "vllm" in title.lower() or "EngineCore" in title:
            out[p.pid] = title[:80]
    return out


def test_two_replicas_answer_as_one_with_adapters_per_request_sleep_and_release(model, adapters):
    pytest.importorskip("vllm")
    from selflengthen.engines.vllm_engine import VllmEngine

    reqs = requests()
    one = VllmEngine(model, **ENGINE)
    one.load()
    one.set_adapters(adapters)
    expected = one.generate(reqs)
    one.close()
    by_id = dict(zip((r.id for r in reqs), expected))
    assert by_id["the sea-generator"] != by_id["the sea-None"] != by_id["the sea-extender"]  # adapters matter

    before = engine_processes()
    two = VllmEngine(model, data_parallel_size=2, **ENGINE)
    two.load()
    two.set_adapters(adapters)
    client = two._llm._llm.engine_core  # vLLM's DP load-balancing client
    assert len(client.core_engines) == 2
    chosen = []
    pick = client.get_core_engine_for_request

    def record(request):
        engine = pick(request)
        chosen.append((request.lora_request.lora_name if request.lora_request else None, engine))
        return engine

    client.get_core_engine_for_request = record
    got = two.generate(reqs)
    assert got == expected  # base, both adapters, greedy and seeded: exactly one replica's answers
    # both replicas served requests, and each adapter was served by both (loaded per request where it ran)
    assert len({engine for _, engine in chosen}) == 2
    for role in ("generator", "extender"):
        assert len({engine for name, engine in chosen if name and name.startswith(role)}) == 2, chosen
    # the stream form yields every request once, finish reasons set
    from selflengthen.engines.base import RequestQueue

    done = list(two.stream(RequestQueue(reqs[:6])))
    assert sorted(c.id for c in done) == sorted(r.id for r in reqs[:6])
    assert {c.finish_reason for c in done} <= {"stop", "length"}
    assert all(c.finish_reason == "length" for c in done if c.new_tokens == 12)

    # sleep and wake-up reach every replica (vLLM's CPU worker keeps the weights in RAM: no memory is freed
    # here, which is why release() shuts down on the CPU; on GPUs the same calls free it)
    two._llm.sleep(1)
    assert two._llm.is_sleeping()  # a consensus: vLLM raises if the replicas disagree
    two._llm.wake_up()
    assert not two._llm.is_sleeping()
    assert two.generate(reqs[:3]) == expected[:3]

    # release() on the CPU shuts both replicas and the coordinator down; the next generate starts them again
    started = {pid: title for pid, title in engine_processes().items() if pid not in before}
    assert len(started) >= 2, started  # two engine cores (and vLLM's DP coordinator)
    two.release()
    assert two.release_mode == "shutdown" and two._llm is None
    deadline = time.time() + 60
    while set(engine_processes()) & set(started) and time.time() < deadline:
        time.sleep(1)
    left = {pid: title for pid, title in engine_processes().items() if pid in started}
    assert not left, f"engine processes outlived release(): {left} (started: {started})"
    assert two.generate(reqs[-3:]) == expected[-3:]
    assert two.stats.extra["starts"] == 2
    two.close()


# The tiny model writes gibberish: self-instruct's proposals fail and the seed pool fills the round; the filter
# takes any final letter as an ending, so that answers pass and extension has rows.
SMALL = ["engine=vllm", "engine.enforce_eager=true", "engine.cpu_kvcache_space_gib=0.25", "engine.max_model_len=2048",
         "engine.dtype=float32", "engine.max_lora_rank=8", "iterations=1", "train.backend=fake",
         "self_instruct.num_new=6", "self_instruct.per_wave=6", "self_instruct.max_waves=1",
         "self_instruct.max_new_tokens=40", "generate.samples=4", "generate.max_attempts=3",
         "generate.max_new_tokens=48", "extend.samples=2", "extend.passes=1", "extend.max_attempts=2",
         "extend.max_new_tokens=64", "extend.min_growth=1.0", "run.checkpoint_every=1", "report.plots=false",
         "prompts.filter.terminal='abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.!?'"]
LOGS = ["self_instruct/candidates.jsonl", "self_instruct/instructions.jsonl", "initial/attempts.jsonl",
        "extend/passes.jsonl"]


def lines(run: Path) -> dict[str, list[str]]:
    out = {}
    for rel in LOGS:
        path = run / "round_001" / rel
        out[rel] = path.read_text().splitlines() if path.exists() else []
    return out


def test_a_round_on_two_replicas_equals_one_and_resumes_after_a_kill(tmp_path, model):
    pytest.importorskip("vllm")
    base = [f"model.path={model}", f"run.root={tmp_path}", *SMALL]
    env = {**os.environ, "PYTHONPATH": str(REPO), "SELFLENGTHEN_QUIET": "1", "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "selflengthen", *base]
    one = subprocess.run([*cmd, "run.name=one"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]

    # two replicas, killed (the whole process group: run, engine cores, coordinator) in the middle of a stage
    two = tmp_path / "two"
    proc = subprocess.Popen([*cmd, "run.name=two", "engine.data_parallel_size=2"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed_in = None
    deadline = time.time() + 1200
    try:
        while proc.poll() is None and time.time() < deadline and killed_in is None:
            for rel in ("initial/attempts.jsonl", "extend/passes.jsonl"):
                log = two / "round_001" / rel
                if log.exists() and log.read_text().count("\n") >= 2 and not (log.parent / "done.json").exists():
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed_in = rel
                    break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_in, "the two-replica run finished before it could be killed mid-stage"
    partial = lines(two)[killed_in]
    assert 2 <= len(partial)

    again = subprocess.run([*cmd, "run.name=two", "engine.data_parallel_size=2"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    a, b = lines(tmp_path / "one"), lines(two)
    for rel in LOGS:
        assert a[rel], rel
        ids = [json.loads(line)["id"] for line in b[rel]]
        assert len(ids) == len(set(ids)), f"{rel}: an item logged twice after the resume"
        assert set(b[rel]) == set(a[rel]), f"{rel}: two replicas (killed, resumed) differ from one"
    assert set(partial) <= set(b[killed_in])  # what was logged before the kill was kept, not redone
    summary = json.loads((two / "round_001" / "summary.json").read_text())
    assert summary["round"] == 1
    shutil.rmtree(tmp_path, ignore_errors=True)
