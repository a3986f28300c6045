"""Shared fixtures: a tiny randomly initialised Llama with its own small tokenizer, built in seconds; and the
tests' one fake run (`run_fake`, `finished_run`) with `tree`, which compares two runs' artifacts.

The tiny model answers nonsense, which is what orchestration, engine-mechanics and trainer tests need:
they check shapes, batching, adapters and files, not prose. Tests of real behaviour use the embedded
model and carry the `slow` marker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Write a detailed essay about the history of the printing press and its effect on literacy.",
    "The committee met on Tuesday. It reviewed the budget, the schedule and the risks of the project.",
    "请写一篇关于城市交通规划的长文，讨论地铁、公交和自行车道的作用。",
    "Instruction 1: Write a story. Instruction 2: Draft a report. Instruction 3:",
    "Yes. No. yes no. The answer is yes, because the instruction asks for a long article.",
    "Paragraph one explains the idea.\n\nParagraph two gives an example.\n\nParagraph three concludes.",
] * 20


def build_tiny_model(folder: Path, seed: int = 0, **sizes) -> Path:
    """Write a tiny Llama (2 layers, hidden 64) and a 600-token BPE tokenizer with a ChatML template. `sizes`
    override the Llama config (vLLM's CPU attention needs a head size of 32 or more: hidden_size=128,
    num_attention_heads=2)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)

    torch.manual_seed(seed)
    config = LlamaConfig(**{**dict(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                   bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                                   pad_token_id=fast.pad_token_id, tie_word_embeddings=True), **sizes})
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"))


def liven(model, seed: int = 1) -> None:
    """Re-draw a tiny model's weight matrices larger (N(0, 0.25)), in place: its greedy answers then differ
    from prompt to prompt and from adapter to adapter."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.25, generator=gen)


def random_adapters(model_path, tmp_path_factory, roles=("generator", "extender")) -> dict[str, str]:
    """A random LoRA adapter per role (init_lora_weights=False: A and B both random, so they change answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, role in enumerate(roles, start=1):
        torch.manual_seed(seed)
        net = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        cfg = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        folder = tmp_path_factory.mktemp(f"lora_{role}")
        get_peft_model(net, cfg).save_pretrained(folder)
        out[role] = str(folder)
    return out


@pytest.fixture(scope="session")
def lively_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with its weights re-drawn larger: its greedy answers differ from prompt to prompt (and
    from adapter to adapter), which the conftest model's near-zero weights do not."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("lively_llama")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    liven(model)
    model.save_pretrained(out)
    for f in Path(tiny_model_dir).iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, out)
    return out


REPO = Path(__file__).resolve().parent.parent

# A whole run with the deterministic fake engine and fake trainer: seconds, no model.
FAKE = ["experiment=fake", "run.checkpoint_every=3"]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "selflengthen" / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def fake_settings(run_dir: Path, *overrides: str):
    from selflengthen.settings import Settings

    return Settings.from_config(compose(*FAKE, *overrides), run_dir)


def fake_engine():
    from selflengthen.engines import session

    return session.LazyEngine({"name": "fake"}, lambda: "fake-model")


def run_fake(run_dir: Path, *overrides: str, engine=None):
    """The tests' one fake run: experiment=fake (and `overrides`) in `run_dir`, on the fake engine and trainer.
    Returns (the round summaries, the engine it ran on)."""
    from selflengthen import recipe

    engine = engine or fake_engine()
    return recipe.run(fake_settings(run_dir, *overrides), engine, lambda: "fake-model"), engine


def finished_run(run_dir: Path, *overrides: str, engine=None):
    """`run_fake`, for tests that go on with the finished run: returns its Settings."""
    run_fake(run_dir, *overrides, engine=engine)
    return fake_settings(run_dir, *overrides)


LOGS = ("candidates.jsonl", "attempts.jsonl", "passes.jsonl", "steps.jsonl")


def tree(run_dir: Path) -> dict[str, str]:
    """Every artifact's content except timings, for comparing two runs. `report/` is left out: it is redrawn
    from the artifacts at the end of every run (binary PNGs), not an artifact itself."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if (p.is_file() and p.name not in ("lock",) and ".hydra" not in p.parts and not p.name.endswith(".log")
                and p.relative_to(run_dir).parts[0] != "report"):
            text = p.read_text().replace(str(run_dir), "<run>")  # absolute adapter paths
            if p.suffix == ".json":
                text = json.dumps(_strip_times(json.loads(text)), sort_keys=True)
            elif p.name in LOGS:  # item logs: the same records, in whatever order the batches landed
                text = "\n".join(sorted(text.splitlines()))
            out[str(p.relative_to(run_dir))] = text
    return out


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items()
                if k not in ("seconds", "finished", "created", "updated", "time", "engine_load")}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def retrain_in_place(run_dir: Path, r: int, role: str = "generator") -> Path:
    """Simulate the role's adapter of round r retrained at the same path (new weights, same folder), with its
    stage record rewritten as the train stage would: a legitimate change, not damage."""
    import json

    from selflengthen.stages.train import adapter_files
    from selflengthen.runfolder.store import mark_done

    folder = Path(run_dir) / f"round_{r:03d}" / "train" / role
    config = folder / "adapter" / "adapter_config.json"
    config.write_text(config.read_text().replace('"digest": "', '"digest": "retrained-'))
    summary = json.loads((folder / "done.json").read_text())["summary"]
    mark_done(folder, adapter_files(folder), summary=summary)
    return config


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a shared 2-core machine, two threads that contend with other jobs spin-wait and
    run tens of times slower (measured for bench/grpo_length.py). Use with `pytestmark`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Runs `python -m selflengthen` once per case in ONE fresh interpreter (imports paid once), each case's
# stderr captured on its own; a case may hold the run folder's lock while it runs.
_CLI_DRIVER = r"""
import json, os, runpy, sys, tempfile
from selflengthen.runfolder.store import RunLock
for i, case in enumerate(json.loads(sys.argv[1])):
    lock = RunLock(case["lock"]) if case["lock"] else None
    if lock:
        lock.acquire()  # another open file: the job's own flock on the lock file conflicts with it
    sys.argv = ["selflengthen", *case["argv"]]
    err = tempfile.TemporaryFile()
    saved = os.dup(2); os.dup2(err.fileno(), 2)
    code = 0
    try:
        runpy.run_module("selflengthen", run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.stderr.flush(); os.dup2(saved, 2)
        if lock: lock.release()
    err.seek(0)
    print(f"CASE {i} exit={code}\n" + err.read().decode(errors="replace") + "\nEND", flush=True)
"""


def run_cli_cases(cases: list, locks: Optional[list] = None) -> list[str]:
    """`exit=<code>\n<stderr>` of each case (a list of CLI arguments); `locks[i]`, a run folder whose lock
    case i runs under, or None."""
    import json
    import subprocess
    import sys

    spec = [{"argv": list(argv), "lock": str(lock) if lock else None}
            for argv, lock in zip(cases, locks or [None] * len(cases))]
    proc = subprocess.run([sys.executable, "-c", _CLI_DRIVER, json.dumps(spec)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}, timeout=900)
    return [proc.stdout.split(f"CASE {i} ")[1].split("\nEND")[0] for i in range(len(cases))]


def pytest_sessionfinish(session, exitstatus):
    """Under a documented marked command (run.sh test-slow / test-vllm / test-dist, which set
    SELFLENGTHEN_REQUIRE_RUN), a selected test that was skipped did not run what the command promises: the
    run fails, naming it. Nothing collected is pytest's own exit code 5, which run.sh reports."""
    marker = os.environ.get("SELFLENGTHEN_REQUIRE_RUN")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not marker or reporter is None or exitstatus not in (0,):
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped:
        names = ", ".join(getattr(r, "nodeid", "?") for r in skipped[:10])
        reporter.write_line(f"{len(skipped)} test(s) selected by -m {marker} were skipped ({names}): the command "
                            "must run every test it names, so this run fails; install what the skip reason names",
                            red=True)
        session.exitstatus = 1
