"""The run folder's layout: every path of a run, and which rounds are finished. Nothing else spells them.

```
<run>/manifest.json                 what the run was made with (manifest.py)
<run>/lock                          one process at a time (store.RunLock)
<run>/round_001/<stage>/...         one folder per stage, named by the stage (never by its position)
<run>/round_001/summary.json        written last: the round is complete
<run>/final/<stage>/...             the method's stages after the last round (the final model)
<run>/eval/...                      held-out evals (evidence/heldout.py)
<run>/collect/..., <run>/export/    collection and the exported data set (evidence/dataset.py)
<run>/report/                       tables and plots (evidence/tables.py)
```

Runs made before stage folders were named by stage (`01_self_instruct`, ..., `05_train`) are renamed
in place the first time a round folder is opened (`migrate_round`), so they resume as before.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
MANIFEST = "manifest.json"
LOCK = "lock"
EVAL_DIR = "eval"
REPORT_DIR = "report"
EXPORT_DIR = "export"
COLLECT_DIR = "collect"
FINAL_DIR = "final"

# folder names used before stages were named by stage -> today's names
LEGACY_STAGE_NAMES = {"01_self_instruct": "self_instruct", "02_initial": "initial", "03_extend": "extend",
                      "04_sft_data": "sft_data", "05_train": "train"}


def round_name(r: int) -> str:
    return f"round_{r:03d}"


def round_dir(run_dir: Path, r: int) -> Path:
    return Path(run_dir) / round_name(r)


def stage_dir(run_dir: Path, r: int, stage: str) -> Path:
    return round_dir(run_dir, r) / stage


def summary_path(run_dir: Path, r: int) -> Path:
    return round_dir(run_dir, r) / SUMMARY


def final_dir(run_dir: Path) -> Path:
    return Path(run_dir) / FINAL_DIR


def eval_dir(run_dir: Path) -> Path:
    return Path(run_dir) / EVAL_DIR


def report_dir(run_dir: Path) -> Path:
    return Path(run_dir) / REPORT_DIR


def export_dir(run_dir: Path) -> Path:
    return Path(run_dir) / EXPORT_DIR


def collect_dir(run_dir: Path) -> Path:
    return Path(run_dir) / COLLECT_DIR


def manifest_path(run_dir: Path) -> Path:
    return Path(run_dir) / MANIFEST


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK


def migrate_round(run_dir: Path, r: int) -> None:
    """Rename a legacy numbered stage folder to its stage name (once; never overwrites)."""
    rd = round_dir(run_dir, r)
    if not rd.is_dir():
        return
    for old, new in LEGACY_STAGE_NAMES.items():
        src, dst = rd / old, rd / new
        if src.is_dir() and not src.is_symlink() and not dst.exists():
            src.rename(dst)
            log.info("%s: renamed the stage folder %s to %s (stage folders are named by stage now)", rd, old, new)


def relative(run_dir: Path, path: Optional[str]) -> Optional[str]:
    """A path inside the run folder as stored in records: relative to the run folder, so a moved or
    copied run folder keeps pointing at its own files. Paths outside stay absolute."""
    if not path:
        return None
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path(run_dir).resolve())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


def absolute(run_dir: Path, path: Optional[str]) -> Optional[str]:
    """The inverse of `relative`: a stored path made usable (relative ones are under the run folder)."""
    if not path:
        return None
    p = Path(path)
    return str(p if p.is_absolute() else Path(run_dir) / p)


def adapters_abs(run_dir: Path, adapters: dict) -> dict:
    return {k: absolute(run_dir, v) for k, v in adapters.items()}


def adapters_rel(run_dir: Path, adapters: dict) -> dict:
    return {k: relative(run_dir, v) for k, v in adapters.items()}


def read_summary(run_dir: Path, r: int) -> Optional[dict]:
    """Round r's summary, or None when it is missing or damaged (the round is not finished: a damaged one is
    reported and sealed again). Anything but a plain file there is refused (store.NotAFile)."""
    from selflengthen.runfolder.records import RoundSummary
    from selflengthen.runfolder.store import CorruptArtifact, read_record

    path = summary_path(run_dir, r)
    if not os.path.lexists(path) and not (os.path.lexists(path.parent) and not path.parent.is_dir()):
        return None
    try:
        return read_record(path, RoundSummary)
    except CorruptArtifact as exc:
        log.warning("round %d summary is not usable: %s", r, exc)
        return None


def round_damage(run_dir: Path, r: int, summary: dict) -> Optional[str]:
    """The first stage of finished round r whose record no longer vouches for its artifacts (its done.json
    is missing, or an artifact it lists is missing or changed), as "stage" or "stage/role"; None when every
    stage is intact. Checked with store.stage_done, which also removes a record that no longer matches, so
    the next run redoes that stage."""
    from selflengthen.runfolder.store import DONE, stage_done

    rd = round_dir(run_dir, r)
    for name, section in (summary.get("stages") or {}).items():
        folder = rd / name
        roles = [k for k, v in section.items() if isinstance(v, dict)] if isinstance(section, dict) else []
        if (folder / DONE).exists() or not any((folder / k).is_dir() for k in roles):
            if stage_done(folder) is None:
                return name
        else:  # a stage with one record per role (train/<role>/done.json)
            for role in roles:
                if stage_done(folder / role) is None:
                    return f"{name}/{role}"
    return None


def finished_rounds(run_dir: Path) -> dict[int, dict]:
    """Round number -> its summary, for every finished round 1, 2, ... in order. A round without a usable
    summary, or whose stages' artifacts no longer match their records (`round_damage`), ends the list:
    later rounds build on it. The adapters in the summaries are absolute paths."""
    out: dict[int, dict] = {}
    r = 1
    while (summary := read_summary(run_dir, r)) is not None:
        damaged = round_damage(run_dir, r, summary)
        if damaged:
            log.warning("round %d is not usable: its %s stage's artifacts no longer match their record. Rounds "
                        "from %d on are left out until the loop (the same command) redoes that stage", r, damaged, r)
            break
        summary = dict(summary)
        summary["adapters_out"] = adapters_abs(run_dir, summary["adapters_out"])
        summary["adapters_in"] = adapters_abs(run_dir, summary.get("adapters_in", {}))
        out[r] = summary
        r += 1
    return out


# --- what a file of the run is, and what to do when it is damaged ----------------------------------------

def describe(path: Path) -> tuple[str, str]:
    """(what the file at `path` is to the run, what a user does when it is damaged or of the wrong kind):
    records.describe, which names this module's files without importing it (store.py uses it)."""
    from selflengthen.runfolder.records import describe as _describe

    return _describe(path)
