"""The run manifest: what a run folder was made with, and the drift check on resume.

`manifest.json` records the *semantic* config (what changes the result: method, model, prompts, the seed
file's content, filters, sampling, training, seed — see settings.SEMANTIC_KEYS and the method's own keys),
the method's stage order, and how many rounds are complete (informational: a round is finished when its
summary is on disk, see layout.finished_rounds). Resuming with a different semantic config stops, naming
the keys, unless the user accepts the change explicitly. A key that an older version of the project did
not record yet is adopted silently (and noted in `history`), so upgrading never looks like drift.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from selflengthen import layout
from selflengthen.store import StoreError, atomic_write_json, read_json

if TYPE_CHECKING:  # pragma: no cover
    from selflengthen.settings import Settings

MANIFEST = layout.MANIFEST


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
    path = layout.manifest_path(run_dir)
    return read_json(path) if path.exists() else None


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


def open_run(s: "Settings", stages: list[str] | None = None) -> dict:
    """Create the manifest, or check the existing one against this config (drift)."""
    old = load(s.run_dir)
    if old is None:
        manifest = {"created": time.time(), "method": s.method_name, "stages": stages or [],
                    "semantic": s.semantic, "rounds_complete": 0, "history": []}
        atomic_write_json(layout.manifest_path(s.run_dir), manifest)
        return manifest
    added = _adopt_new_keys(old, s.semantic)
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
    if changed or added or new_order:
        atomic_write_json(layout.manifest_path(s.run_dir), old)
    return old


def record_round(run_dir: Path, manifest: dict, round_no: int) -> None:
    manifest["rounds_complete"] = max(manifest.get("rounds_complete", 0), round_no)
    manifest["updated"] = time.time()
    atomic_write_json(layout.manifest_path(run_dir), manifest)
