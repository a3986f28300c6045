"""A stand-in trainer for orchestration tests: writes a small deterministic 'adapter' instead of training.

Its adapter is a digest of the rows and of its parent adapter, so a test can tell whether a round trained
on the right data and continued from the right adapter. `train.backend=fake` selects it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from selflengthen.engines.fake import _adapter_identity


def fake_train_lora(model_path: str, rows: list[dict], out_dir: Path, init_adapter: Optional[str], cfg=None,
                    progress=None) -> dict:
    """Writes a small, deterministic 'adapter' (a digest of its data and its parent) instead of training."""
    from selflengthen.store import atomic_write_json

    if not rows:
        raise ValueError("no training rows")
    parent = _adapter_identity(init_adapter)
    digest = hashlib.sha256(json.dumps([rows, parent]).encode()).hexdigest()
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "adapter" / "adapter_config.json", {"fake": True, "digest": digest})
    metrics = {"loss": int(digest[:6], 16) / 16**6, "steps": len(rows), "tokens": sum(
        len(m["content"].split()) for r in rows for m in r["messages"]), "seconds": 0.0}
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics
