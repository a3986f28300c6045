"""GRPO trainer: config validation, prompt rows, reward wiring, a few real steps on the tiny random Llama
(adapter + metrics.jsonl), resume after a kill, and one slow run on the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selflengthen.training import make_trainer
from selflengthen.training.grpo_lora import GrpoConfig, reward_funcs, to_examples, train_grpo

# Seconds on the tiny model: 2 prompts x group of 2 per step, 16-token answers.
FAST = dict(max_steps=2, num_generations=2, prompts_per_step=2, batch_size=2, max_completion_length=16,
            l_max_words=60, lr=1e-3, save_steps=1000)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(n: int = 4) -> list[dict]:
    return [{"id": f"p{i}", "prompt": f"Write a detailed essay about topic {i}. Aim for about 20 words.",
             "lo": 18, "hi": 22} for i in range(n)]


# --- config ------------------------------------------------------------------------------------------


def test_config_defaults_follow_the_paper_and_the_backend_is_registered():
    trainer, cfg = make_trainer({"backend": "grpo"})
    assert trainer is train_grpo and isinstance(cfg, GrpoConfig)
    assert (cfg.num_generations, cfg.beta, cfg.temperature, cfg.max_steps) == (32, 0.0, 0.8, 150)
    assert cfg.l_max == int(14336 * 0.75) and not cfg.use_vllm


@pytest.mark.parametrize("key, value", [
    ("lr", 0), ("lr", "fast"), ("max_steps", 0), ("max_steps", 1.5), ("num_generations", 1),
    ("batch_size", 3), ("temperature", 0), ("top_p", 1.5), ("beta", -0.1), ("loss_type", "ppo"),
    ("think", "yes"), ("dtype", "fp16"), ("language", "fr"), ("dup_threshold", 0), ("warmup_ratio", 1),
    ("weights", {"length": -1}), ("weights", {"style": 1}), ("weights", {"length": 0, "format": 0,
                                                                        "repetition": 0}),
    ("weights", {"quality": 1}),  # a quality weight needs quality_model
    ("use_vllm", 1), ("save_steps", True), ("nonsense", 1),
])
def test_config_rejects_bad_values_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        GrpoConfig.from_dict({key: value})


def test_config_accepts_partial_weights_and_hydra_nulls():
    cfg = GrpoConfig.from_dict({"weights": {"quality": 2}, "quality_model": "/rm", "system_prompt": None})
    assert cfg.weights == {"length": 1.0, "format": 1.0, "repetition": 1.0, "quality": 2}
    assert cfg.system_prompt is None


def test_the_yaml_option_parses():
    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "selflengthen" / "conf" / "train" / "grpo.yaml"))
    assert conf["backend"] == "grpo"
    _, cfg = make_trainer(conf)
    assert cfg == GrpoConfig.from_dict(conf)


# --- rows and rewards --------------------------------------------------------------------------------


def test_prompt_rows_become_chat_examples_and_bad_rows_are_refused():
    cfg = GrpoConfig.from_dict({"think": True, "l_max_words": 1000})
    ex = to_examples([{"id": "a", "prompt": "Write.", "lo": 100, "hi": 200},
                      {"id": "b", "prompt": [{"role": "user", "content": "Hi."}], "lo": 0, "hi": 10}], cfg)
    assert ex[0]["prompt"][0]["role"] == "system" and "<answer>" in ex[0]["prompt"][0]["content"]
    assert ex[0]["prompt"][1] == {"role": "user", "content": "Write."} and (ex[0]["lo"], ex[0]["hi"]) == (100, 200)
    assert set(ex[1]) == {"prompt", "lo", "hi"}
    for bad in ({"prompt": "", "lo": 1, "hi": 2}, {"prompt": "x", "lo": 5, "hi": 2},
                {"prompt": "x", "lo": 1, "hi": 1000}, {"prompt": "x", "lo": "1", "hi": 2}):
        with pytest.raises(ValueError, match="prompt row 0"):
            to_examples([bad], cfg)
    with pytest.raises(ValueError, match="no prompt rows"):
        to_examples([], cfg)


def test_reward_funcs_score_trl_completions_with_the_row_ranges():
    cfg = GrpoConfig.from_dict({"l_max_words": 100})
    funcs, weights = reward_funcs(cfg)
    assert [f.__name__ for f in funcs] == ["length", "format", "repetition"] and weights == [1.0, 1.0, 1.0]
    completions = [[{"role": "assistant", "content": "one two three four five."}],
                   [{"role": "assistant", "content": "Same line here.\nSame line here.\nSame line here."}]]
    logged = {}
    kw = dict(prompts=[[], []], completions=completions, lo=[10.0, 3.0], hi=[20.0, 6.0],
              log_metric=lambda k, v: logged.setdefault(k, v))
    length, fmt, rep = (f(**kw) for f in funcs)
    assert length == [0.5, 1.0] and logged["answer_words"] == 4  # near-duplicate lines count once: 5 and 3
    assert fmt == [1.0, 1.0] and rep[0] == 1.0 and rep[1] == pytest.approx(1 - 6 / 9)


# --- real steps on the tiny model --------------------------------------------------------------------


def _metrics_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_few_steps_write_an_adapter_and_per_step_metrics(tiny_model_dir, tmp_path):
    steps = []
    metrics = train_grpo(str(tiny_model_dir), _rows(), tmp_path, None, GrpoConfig.from_dict(FAST),
                         progress=lambda done, total: steps.append((done, total)))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter.tmp").exists() and not (tmp_path / "checkpoints").exists()
    assert steps == [(1, 2), (2, 2)] and metrics["steps"] == 2
    lines = _metrics_lines(tmp_path)
    assert [r["step"] for r in lines] == [1, 2]
    for key in ("rewards/length/mean", "rewards/format/mean", "rewards/repetition/mean",
                "completions/mean_length", "answer_words"):
        assert key in lines[0], key
    assert all(r["tokens_per_s"] > 0 for r in lines)
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2


def test_a_killed_run_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    import selflengthen.training.grpo_lora as grpo

    class Killed(Exception):
        pass

    class KillAfter(TrainerCallback):  # the process dies right after checkpoint-2 is written
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise Killed

    cfg = GrpoConfig.from_dict({**FAST, "max_steps": 3, "save_steps": 2})
    real_build = grpo.build_trainer

    def build_and_kill(*args, callbacks=(), **kwargs):
        return real_build(*args, callbacks=[*callbacks, KillAfter()], **kwargs)

    grpo.build_trainer = build_and_kill
    try:
        with pytest.raises(Killed):
            train_grpo(str(tiny_model_dir), _rows(), tmp_path, None, cfg)
    finally:
        grpo.build_trainer = real_build
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir() and not (tmp_path / "adapter").exists()

    seen = []
    metrics = train_grpo(str(tiny_model_dir), _rows(), tmp_path, None, cfg,
                         progress=lambda done, total: seen.append(done))
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 3
    assert seen == [3]  # the global step continues; steps 1-2 are not redone
    assert [r["step"] for r in _metrics_lines(tmp_path)] == [1, 2, 3]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_continuing_from_an_adapter_trains_that_adapter(tiny_model_dir, tmp_path):
    first = tmp_path / "first"
    train_grpo(str(tiny_model_dir), _rows(2), first, None, GrpoConfig.from_dict({**FAST, "max_steps": 1,
                                                                                  "prompts_per_step": 1}))
    second = tmp_path / "second"
    # beta > 0: TRL keeps a frozen "ref" copy of the adapter for the KL; only the trained one is saved
    train_grpo(str(tiny_model_dir), _rows(2), second, str(first / "adapter"),
               GrpoConfig.from_dict({**FAST, "max_steps": 1, "prompts_per_step": 1, "beta": 0.1}))
    a = json.loads((first / "adapter" / "adapter_config.json").read_text())
    b = json.loads((second / "adapter" / "adapter_config.json").read_text())
    assert a["r"] == b["r"] and sorted(a["target_modules"]) == sorted(b["target_modules"])
    assert sorted(p.name for p in (second / "adapter").iterdir() if p.is_dir()) == []  # no ref/ sub-adapter
    assert "kl" in _metrics_lines(second)[0]


@pytest.mark.slow
def test_grpo_on_the_embedded_model(tmp_path):
    from selflengthen.engines.models import resolve_model_path

    model = resolve_model_path("embedded:smollm2-135m", None)
    rows = [{"id": f"p{i}", "prompt": f"Write a short note to a neighbour about {topic}. Aim for about 40 words.",
             "lo": 36, "hi": 44} for i, topic in enumerate(["a lost cat", "a party", "a parcel", "the hedge"])]
    cfg = GrpoConfig.from_dict(dict(max_steps=2, num_generations=4, prompts_per_step=1, batch_size=4,
                                    max_completion_length=96, l_max_words=150, lr=1e-4, save_steps=1))
    metrics = train_grpo(model, rows, tmp_path, None, cfg)
    assert metrics["steps"] == 2 and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    lines = _metrics_lines(tmp_path)
    assert len(lines) == 2 and all(0 <= r["rewards/length/mean"] <= 1 for r in lines)
    assert all(r["answer_words"] > 0 for r in lines)  # the real model writes words
