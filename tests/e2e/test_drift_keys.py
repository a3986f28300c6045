"""Every key group that changes what a run produces is drift; throughput knobs never are.

The groups are the README's (Resume, drift): method, model, seed, prompts (filters included), data (the seed
file's content, not only its name), decoding, training, and every stage setting of the method. Each is changed
alone against a run folder's manifest and must be refused; the throughput knobs must leave the manifest's
history empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import fake_settings
from selflengthen.runfolder import manifest as manifest_mod
from selflengthen import recipe
from selflengthen.runfolder.manifest import DriftError
from recording import RecordingEngine

SEEDS = [{"prompt": "Write a long essay about rivers."}, {"prompt": "Write a long report on city parks."},
         {"prompt": "Write a detailed story about a lighthouse."}]

# (group, override): one value of each group differing from experiment=fake's
CHANGES = [
    ("method.name", "method=agentwrite"),
    ("model.path", "model.path=other-model"),
    ("seed", "seed=43"),
    ("prompts", "prompts.filter.ngram=9"),
    ("prompts", "prompts.extend.stage1='Rewrite longer: {text}'"),
    ("prompts", "prompts=zh"),
    ("decoding", "decoding.temperature=0.5"),
    ("decoding", "decoding.top_p=0.9"),
    ("train", "train.lr=2e-4"),
    ("self_instruct", "self_instruct.max_words=400"),
    ("generate", "generate.max_new_tokens=201"),
    ("extend", "extend.min_growth=1.3"),
    ("sampling", "sampling.p=2.0"),
    ("sft", "sft.drop_lines=0.3"),
]


def _seed_file(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def made(tmp_path):
    """A run folder whose manifest was written by the fake preset with a seed file of our own."""
    seeds = _seed_file(tmp_path / "seeds.jsonl", SEEDS)
    run_dir = tmp_path / "run"
    manifest_mod.open_run(fake_settings(run_dir, f"data.seed_file={seeds}"))
    return run_dir, seeds


@pytest.mark.parametrize("group, override", CHANGES, ids=[o for _, o in CHANGES])
def test_each_semantic_group_is_drift(made, group, override):
    run_dir, seeds = made
    s = fake_settings(run_dir, f"data.seed_file={seeds}", override)
    with pytest.raises(DriftError):
        manifest_mod.open_run(s)
    changed = manifest_mod.diff_keys(manifest_mod.load(run_dir)["semantic"], s.semantic)
    assert any(k == group or k.startswith(group + ".") for k in changed), changed  # refused for this group


def test_a_seed_file_with_other_content_is_drift_under_the_same_name(made):
    run_dir, seeds = made
    _seed_file(seeds, SEEDS[:2] + [{"prompt": "Write a detailed guide to winter gardening."}])
    with pytest.raises(DriftError) as err:
        manifest_mod.open_run(fake_settings(run_dir, f"data.seed_file={seeds}"))
    assert "data.seed_file_sha256" in str(err.value)


def test_another_seed_file_is_drift(made, tmp_path):
    run_dir, _ = made
    other = _seed_file(tmp_path / "other.jsonl", SEEDS[1:] + [{"prompt": "Write a long memo on budgets."}])
    with pytest.raises(DriftError):
        manifest_mod.open_run(fake_settings(run_dir, f"data.seed_file={other}"))


def test_every_readme_group_is_recorded(made):
    """The manifest holds every group the README names (a group dropped from the drift keys fails here
    even if no override above happens to touch it)."""
    run_dir, _ = made
    semantic = json.loads((run_dir / "manifest.json").read_text())["semantic"]
    for key in ("method.name", "model.path", "seed", "prompts", "data", "decoding", "train", "self_instruct",
                "generate", "extend", "sampling", "sft"):
        assert semantic.get(key) is not None, key
    assert semantic["data"]["seed_file_sha256"]


def test_throughput_knobs_leave_no_history(tmp_path):
    knobs = ["engine.delay=0.001", "+engine.batch_size=3", "run.checkpoint_every=50", "run.checkpoint_seconds=5",
             "eval.limit=3", "eval.max_new_tokens=77", "eval.prompt_file=eval_mixed_en.jsonl",
             "train.save_steps=7", "train.gradient_checkpointing=true"]
    recipe.run(fake_settings(tmp_path, "iterations=1"), RecordingEngine(), lambda: "fake-model")
    before = json.loads((tmp_path / "manifest.json").read_text())
    engine = RecordingEngine()
    recipe.run(fake_settings(tmp_path, "iterations=1", *knobs), engine, lambda: "fake-model")
    after = json.loads((tmp_path / "manifest.json").read_text())
    assert after["history"] == [] and after["semantic"] == before["semantic"]
    assert engine.calls() == []  # the finished round was reused, not redone


def _forget(run_dir: Path, section: str, key: str) -> None:
    """Make the manifest look as if an older version wrote it, before `section.key` existed."""
    path = run_dir / "manifest.json"
    doc = json.loads(path.read_text())
    del doc["semantic"][section][key]
    path.write_text(json.dumps(doc))


def test_an_option_added_later_is_adopted_while_off_and_drift_when_on(made):
    run_dir, seeds = made
    _forget(run_dir, "extend", "repair")
    manifest_mod.open_run(fake_settings(run_dir, f"data.seed_file={seeds}"))  # off: how the run was made
    doc = json.loads((run_dir / "manifest.json").read_text())
    assert doc["semantic"]["extend"]["repair"] is False
    assert doc["history"][-1] == {"time": doc["history"][-1]["time"], "recorded_new_keys": ["extend.repair"]}
    _forget(run_dir, "generate", "repair")
    with pytest.raises(DriftError) as err:  # on: the finished rounds were made without it
        manifest_mod.open_run(fake_settings(run_dir, f"data.seed_file={seeds}", "generate.repair=true"))
    assert "generate.repair" in str(err.value)
