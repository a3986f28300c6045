"""A stand-in trainer for orchestration tests: writes a small deterministic 'adapter' instead of training.

Its adapter is a digest of the rows and of its parent adapter, so a test can tell whether a round trained
on the right data and continued from the right adapter. `train.backend=fake` selects it. It saves the way
the real trainer does (training/save.py: written aside, swapped in whole, metrics.json last), and
`+train.delay=<seconds>` makes it wait with the new adapter aside, so fault-injection tests can kill a run
inside training.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

from selflengthen.engines.fake import _adapter_identity


def fake_train_lora(model_path: str, rows: list[dict], out_dir: Path, init_adapter: Optional[str], cfg=None,
                    progress=None) -> dict:
    """Writes a small, deterministic 'adapter' (a digest of its data and its parent) instead of training."""
    from selflengthen.runfolder.store import atomic_write_json
    from selflengthen.training.save import adapter_digest, save_adapter

    if not rows:
        raise ValueError("no training rows")
    delay = float((cfg or {}).get("delay", 0.0)) if isinstance(cfg, dict) else 0.0
    parent = _adapter_identity(init_adapter)
    digest = hashlib.sha256(json.dumps([rows, parent]).encode()).hexdigest()
    out_dir = Path(out_dir)

    def write(folder: Path) -> None:
        atomic_write_json(folder / "adapter_config.json", {"fake": True, "digest": digest})
        if delay:
            time.sleep(delay)  # "training": the new adapter is aside, the old one still in place

    adapter = save_adapter(out_dir, write)
    metrics = {"loss": int(digest[:6], 16) / 16**6, "steps": len(rows), "tokens": sum(
        len(m["content"].split()) for r in rows for m in r["messages"]), "seconds": 0.0,
        "adapter_sha256": adapter_digest(adapter)}
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def row_lengths(model_path: str, rows: list[dict]) -> list[int]:
    """A row's length in the fake world's tokens (words, as the fake engine counts them); `+train.max_length`
    makes the train stage drop longer rows, as it does for the real trainer."""
    return [sum(len(m["content"].split()) for m in r["messages"]) for r in rows]
