"""Records say how they were made (issue 14): a refused command keeps the run's `.hydra/` record, an edited
seed file is drift, a copied run folder continues with its own adapters, and the final stages are redone
when what they were built from changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FAKE, fake_engine, fake_settings, finished_run, run_cli_cases
from selflengthen import recipe
from selflengthen.engines import session
from selflengthen.runfolder.manifest import DriftError

def test_refused_commands_keep_the_runs_hydra_record(tmp_path):
    run = tmp_path / "fake"
    finished_run(run, "iterations=1")
    hydra = run / ".hydra"
    hydra.mkdir()
    for name in ("config.yaml", "overrides.yaml"):
        (hydra / name).write_text("SENTINEL\n")
    common = [*FAKE, f"run.root={tmp_path}", "iterations=1"]
    parts = run_cli_cases([[*common, "decoding.temperature=abc"],  # invalid value
                           [*common, "seed=7"],  # drift
                           common,  # another process holds the run
                           common],  # accepted: now the record is written
                          locks=[None, None, run, None])
    for part, word in zip(parts[:3], ("decoding.temperature", "different config", "in use by another process")):
        assert part.startswith("exit=2") and word in part and "Traceback" not in part, part
    assert parts[3].startswith("exit=0"), parts[3]
    assert "seed: 42" in (hydra / "config.yaml").read_text()  # the accepted command's record only
    assert "iterations=1" in (hydra / "overrides.yaml").read_text()


def test_refused_command_in_process_leaves_the_record(tmp_path):
    """The order inside the recipe: lock, drift check, then record_config (no CLI needed to see it)."""
    finished_run(tmp_path, "iterations=1")
    s = fake_settings(tmp_path, "iterations=1", "seed=7")
    object.__setattr__(s, "hydra_record", {"config.yaml": "NEW\n"})
    with pytest.raises(DriftError):
        recipe.run(s, fake_engine(), lambda: "fake-model")
    assert not (tmp_path / ".hydra" / "config.yaml").exists()


def test_seed_file_edited_in_place_is_drift(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    rows = [{"prompt": f"Write a long essay about topic number {i}."} for i in range(8)]
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    finished_run(run, "iterations=1", f"data.seed_file={seeds}")
    rows[3]["prompt"] = "Write a long report about something else entirely."
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))  # same path, new content
    with pytest.raises(DriftError, match="seed_file_sha256"):
        finished_run(run, "iterations=2", f"data.seed_file={seeds}")
    assert not (run / "round_002").exists()


class _Recording(session.LazyEngine):
    def __init__(self):
        super().__init__({"name": "fake"}, lambda: "fake-model")
        self.calls: list[dict] = []

    def set_adapters(self, adapters: dict) -> None:
        self.calls.append(dict(adapters))
        super().set_adapters(adapters)


def test_copied_run_continues_with_its_own_adapters(tmp_path):
    """A finished 1-round run is copied, the original deleted, and the copy continued with iterations=2:
    round 2 uses the copy's round-1 adapters, and the result equals a straight 2-round run."""
    from conftest import tree  # the artifact comparison the resume tests use

    finished_run(tmp_path / "original", "iterations=1")
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    shutil.rmtree(tmp_path / "original")
    engine = _Recording()
    finished_run(tmp_path / "copy", "iterations=2", engine=engine)
    used = [a for call in engine.calls for a in call.values() if a]
    assert used and all(Path(a).is_relative_to(tmp_path / "copy") for a in used), used
    summary = json.loads((tmp_path / "copy/round_002/summary.json").read_text())
    assert all(not Path(p).is_absolute() for p in summary["adapters_in"].values())
    finished_run(tmp_path / "straight", "iterations=2")
    assert tree(tmp_path / "copy") == tree(tmp_path / "straight")
