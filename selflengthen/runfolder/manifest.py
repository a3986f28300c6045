"""The run manifest: what a run folder was made with, and the drift check on resume.

`manifest.json` records the *semantic* config (what changes the result: method, model, prompts, the seed
file's content, filters, sampling, training, seed — see settings.SEMANTIC_KEYS and the method's own keys),
the method's stage order, and how many rounds are complete (informational: a round is finished when its
summary is on disk, see layout.finished_rounds). Resuming with a different semantic config stops, naming
the keys, unless the user accepts the change explicitly. A key that an older version of the project did
not record yet is adopted silently (and noted in `history`), so upgrading never looks like drift.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from selflengthen.runfolder import layout
from selflengthen.runfolder.store import StoreError, atomic_write_json

MANIFEST = layout.MANIFEST
# `s` below is the run's Settings (settings.py). It sits above the run folder's layer, so it is not imported
# here, not even for a type hint: what is read of it is s.run_dir, s.semantic(), s.method_name, s.seeds and
# s.accept_drift.
log = logging.getLogger(__name__)


class DriftError(StoreError):
    pass


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def diff_keys(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


def load(run_dir: Path) -> dict | None:
    """The manifest, or None when there is none. A damaged one (not JSON, the wrong shape) or anything but a
    plain file in its place is a StoreError naming it and the fix: never read as "no manifest", which would
    let a rerun with other settings add rounds made another way."""
    from selflengthen.runfolder.records import Manifest
    from selflengthen.runfolder.store import read_record

    path = layout.manifest_path(run_dir)
    if not os.path.lexists(path):
        return None
    return read_record(path, Manifest)


def digest(semantic: dict) -> str:
    """A short digest of a semantic config: what each stage's done record keeps (`semantic` in done.json), so
    the config that made a stage is known without the manifest."""
    return hashlib.sha256(json.dumps(semantic, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def recorded_config(run_dir: Path) -> tuple[bool, dict | None, dict[str, str]]:
    """What the run's own records say made it, for a run folder without its manifest: (any record at all,
    the semantic config the last sealed round recorded or None, {stage folder: config digest} of the stages
    of rounds after that round, from their done records)."""
    from selflengthen.runfolder.records import Done
    from selflengthen.runfolder.store import StoreError, check_record, read_json

    any_record, semantic, last = False, None, 0
    rounds = sorted(int(p.name[6:]) for p in Path(run_dir).glob("round_*") if p.name[6:].isdigit())
    for r in rounds:
        summary = layout.read_summary(run_dir, r)
        if summary is not None:
            any_record = True
            if isinstance(summary.get("semantic"), dict):
                semantic, last = summary["semantic"], r
    stages: dict[str, str] = {}
    for r in rounds:
        rd = layout.round_dir(run_dir, r)
        for marker in sorted([*rd.glob("*/done.json"), *rd.glob("*/*/done.json")]):
            any_record = True
            if r <= last:
                continue
            try:
                made = check_record(marker, read_json(marker), Done).get("semantic")
            except StoreError:
                continue  # a damaged record is redone by the stage itself
            stages[str(marker.parent.relative_to(run_dir))] = made if isinstance(made, str) else ""
    return any_record, semantic, stages


def _legacy_seed_hash(seeds) -> str:
    """How the seed prompts were hashed before the hash became unambiguous (joined with newlines: a line
    break moved between two prompts gave the same hash)."""
    return hashlib.sha256("\n".join(seeds).encode()).hexdigest()[:16]


def _upgrade_seed_hash(old: dict, s: Any) -> list[str]:
    """A manifest that recorded the old seed hash of today's very seeds takes today's hash (an upgrade, not
    drift); any other value stays and is reported as drift."""
    data = old["semantic"].get("data")
    now = (s.semantic.get("data") or {}).get("seed_file_sha256")
    if isinstance(data, dict) and now and data.get("seed_file_sha256") not in (None, now) \
            and data.get("seed_file_sha256") == _legacy_seed_hash(s.seeds):
        data["seed_file_sha256"] = now
        return ["data.seed_file_sha256 (same seeds, unambiguous hash)"]
    return []


def _rebuild(s: Any, stages: list[str] | None) -> dict | None:
    """The manifest of a run folder whose manifest.json is gone, rebuilt from what its rounds recorded; None
    for a run with no record yet (a new run). Refuses (DriftError) when the records say another config made
    the run, or when they are too old to say, unless run.accept_drift."""
    any_record, semantic, made = recorded_config(s.run_dir)
    if not any_record:
        return None
    path = layout.manifest_path(s.run_dir)
    other = sorted(k for k, v in made.items() if v and v != digest(s.semantic))
    unknown = [k for k, v in made.items() if not v]
    if semantic is None and (not made or unknown) and not s.accept_drift:
        raise DriftError(
            f"{path} is missing, and the rounds in {s.run_dir} were made before they recorded their config, so "
            f"this command cannot tell whether its settings are the ones the run was made with; resuming with "
            f"other settings would mix results made two ways. Nothing was started. Fix: restore manifest.json "
            f"from a backup; or, if you are sure this is the run's own config, pass run.accept_drift=true once "
            f"(the manifest is then rebuilt from this command's config); or start a separate run with "
            f"run.name=<new name>.")
    if other and (semantic is None or not diff_keys(semantic, s.semantic)) and not s.accept_drift:
        raise DriftError(
            f"{path} is missing, and the done records of {', '.join(other[:4])}{' and more' if len(other) > 4 else ''}"
            f" in {s.run_dir} say another config made them. Resuming would mix results made two ways; nothing "
            f"was started. Fix: rerun with the overrides the run was made with (see .hydra/overrides.yaml in the "
            f"run folder), start a separate run with run.name=<new name>, or accept the change with "
            f"run.accept_drift=true (finished stages are kept as they are).")
    manifest = {"created": time.time(), "method": s.method_name, "stages": stages or [],
                "semantic": semantic if semantic is not None else s.semantic, "rounds_complete": 0,
                "history": [{"time": time.time(), "rebuilt": "manifest.json was missing: rebuilt from the "
                             "config the finished rounds recorded"}]}
    log.warning("%s was missing: rebuilt from the config the run's rounds recorded%s", path,
                "" if semantic is not None else " (their stage records match this command's config)")
    return manifest


def _adopt_new_keys(old: dict, new: dict) -> list[str]:
    """Semantic keys the old manifest never recorded, taken from `new` (an upgrade, not drift): any new
    top-level key, and a new key inside a recorded section when its value is off (false or null) — an
    opt-in option added later, whose off value is how the run was made. Turned on, it is drift."""
    added: list[str] = []

    def adopt(o: dict, n: dict, prefix: str, top: bool) -> None:
        for k, v in n.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in o:
                if top or v is None or v is False:
                    o[k] = v
                    added.append(name)
            elif isinstance(o[k], dict) and isinstance(v, dict):
                adopt(o[k], v, name, False)

    adopt(old["semantic"], new, "", True)
    return added


def open_run(s: Any, stages: list[str] | None = None) -> dict:
    """Create the manifest, or check the existing one against this config (drift)."""
    old = load(s.run_dir)
    rebuilt = False
    if old is None:
        old = _rebuild(s, stages)
        if old is None:
            manifest = {"created": time.time(), "method": s.method_name, "stages": stages or [],
                        "semantic": s.semantic, "rounds_complete": 0, "history": []}
            atomic_write_json(layout.manifest_path(s.run_dir), manifest)
            return manifest
        rebuilt = True
    added = _adopt_new_keys(old, s.semantic) + _upgrade_seed_hash(old, s)
    changed = diff_keys(old["semantic"], s.semantic)
    if changed and not s.accept_drift:
        flat_old, flat_new = _flatten(old["semantic"]), _flatten(s.semantic)
        shown = "; ".join(f"{k}: {flat_old.get(k, '<unset>')!r} -> {flat_new.get(k, '<unset>')!r}" for k in changed[:8])
        more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
        raise DriftError(
            f"The run folder {s.run_dir} was made with a different config: {shown}{more}. Resuming would mix "
            f"results made two ways. Either start a separate run with run.name=<new name>, or accept the change "
            f"for the rounds still to come with run.accept_drift=true (finished stages are kept as they are)."
        )
    if changed:
        old["history"].append({"time": time.time(), "accepted_drift": changed, "previous": old["semantic"]})
        old["semantic"] = s.semantic
    if added:
        old["history"].append({"time": time.time(), "recorded_new_keys": added})
    new_order = stages is not None and old.get("stages") != stages
    if new_order:
        old["stages"] = stages
    if changed or added or new_order or rebuilt:
        atomic_write_json(layout.manifest_path(s.run_dir), old)
    return old


def record_round(run_dir: Path, manifest: dict, round_no: int) -> None:
    manifest["rounds_complete"] = max(manifest.get("rounds_complete", 0), round_no)
    manifest["updated"] = time.time()
    atomic_write_json(layout.manifest_path(run_dir), manifest)
