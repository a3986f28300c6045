"""Every experiment preset composes with every method: its training settings come from the file for the
method's trainer (selflengthen/conf/experiment_train/<experiment>_<train>.yaml), so `method=lwzero experiment=smoke` gets
GRPO settings and `method=selflengthen experiment=smoke` LoRA ones, and Settings accepts every pair."""

from __future__ import annotations

import pytest

from conftest import REPO, compose
from selflengthen.settings import Settings

EXPERIMENTS = sorted(p.stem for p in (REPO / "selflengthen" / "conf" / "experiment").glob("*.yaml"))
METHODS = sorted(p.stem for p in (REPO / "selflengthen" / "conf" / "method").glob("*.yaml"))
TRAINER = {"selflengthen": "lora", "agentwrite": "lora", "lwzero": "grpo"}

# what each preset's training file sets, per trainer file: checked to land in the composed settings
EXPECT = {
    ("smoke", "lora"): {"epochs": 2, "max_length": 2048, "grad_accum": 2},
    ("smoke", "grpo"): {"max_steps": 4, "num_generations": 4, "max_completion_length": 160},
    ("paper", "lora"): {"epochs": 4, "max_length": 16384, "grad_accum": 32},
    ("paper", "grpo"): {"max_steps": 150, "num_generations": 32},  # selflengthen/conf/train/grpo.yaml holds the paper's values
    ("evidence", "lora"): {"epochs": 3, "lr": 3.0e-4},
}


def test_the_matrix_is_complete():
    assert {"fake", "smoke", "paper", "evidence"} <= set(EXPERIMENTS)
    assert set(METHODS) == set(TRAINER)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("method", METHODS)
def test_every_experiment_composes_with_every_method(experiment, method, tmp_path):
    cfg = compose(f"experiment={experiment}", f"method={method}")
    trainer = TRAINER[method]
    s = Settings.from_config(cfg, tmp_path / "run")  # raises ConfigError on a key the trainer does not know
    assert s.method.name == method
    if experiment == "fake":
        assert s.train_backend == "fake"
        return
    assert s.train_backend == {"lora": "trl", "grpo": "grpo"}[trainer]
    for key, value in EXPECT.get((experiment, trainer), {}).items():
        assert getattr(s.train, key) == value, (experiment, method, key)


def test_a_command_line_train_key_still_wins_over_the_preset():
    assert compose("experiment=smoke", "method=lwzero", "train.max_steps=7").train.max_steps == 7
    assert compose("experiment=smoke", "train.epochs=5").train.epochs == 5


def test_no_preset_file_for_a_trainer_that_does_not_exist():
    trainers = {p.stem for p in (REPO / "selflengthen" / "conf" / "train").glob("*.yaml")}
    for p in (REPO / "selflengthen" / "conf" / "experiment_train").glob("*.yaml"):
        exp, _, trainer = p.stem.rpartition("_")
        assert exp in EXPERIMENTS and trainer in trainers, p.name
