"""final: the method's last step, after the rounds — the model a user would ship (DESIGN §1, last paragraph).

With `final.enabled=true` the recipe runs these stages once, in `iterations/<run>/final/`, after the last
round (and again when a later `iterations=` adds rounds: their inputs changed, so their records no longer
match and they are redone):

  final_data  the collection (evidence/dataset.py: every round's long pairs, fresh answers by the final generator,
              length control added to the queries) exported to `export/`, and its chat rows as the training
              rows `final_data/<role>.jsonl` of the method's answering role;
  train       that role trained on them (continuing from the last round's adapter, or from the base model
              with `final.from_adapter=base`, which is what the paper's final fine-tune does);
  merge       the adapter merged into the base weights: `final/merge/model/` is a plain model folder that
              transformers and vLLM load with no peft (skipped with `final.merge=false`).

The held-out eval shows the final model as its own row (`final`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from selflengthen.runfolder import layout
from selflengthen.support import ui
from selflengthen.support.checks import rule
from selflengthen.stages import train
from selflengthen.training import NON_SEMANTIC_TRAIN
from selflengthen.stages.common import RoundContext, resumable
from selflengthen.runfolder.store import (atomic_write_bytes, atomic_write_jsonl, check_no_links, fsync_dir, read_bytes, read_jsonl,
                                reset_dir)

log = logging.getLogger(__name__)

DATA, MERGE = "final_data", "merge"


@dataclass(frozen=True)
class Final:
    """`final:` — train the shipped model on the collected, length-controlled pairs after the last round."""

    enabled: bool = False
    from_adapter: str = field(default="last", metadata=rule(choices=("last", "base"),
                                                            fix="use final.from_adapter=last or base"))
    merge: bool = True


def _fingerprint(ctx: RoundContext) -> str:
    """What the final stages were built from: the last round, its adapter (path and content), and the settings
    that change the final data or model (final, collect, train). When any of it changes, the final folder is
    redone as a whole (its stages hand data to each other, so a partial redo would mix two builds)."""
    from selflengthen.evidence.heldout import adapter_identity

    role, fin = ctx.method.answer_role, ctx.cfg("final")
    train = {k: v for k, v in (dataclasses.asdict(ctx.train_cfg) if dataclasses.is_dataclass(ctx.train_cfg)
                               else dict(ctx.train_cfg or {})).items() if k not in NON_SEMANTIC_TRAIN}
    return json.dumps({"round": ctx.round_no - 1, "adapter": adapter_identity(ctx.s.run_dir, ctx.adapters.get(role)),
                       "from_adapter": fin.from_adapter, "merge": fin.merge,
                       "pairs": [list(p) for p in ctx.method.pair_sources()],
                       "collect": dataclasses.asdict(ctx.s.collect), "train": train}, sort_keys=True, default=str)


def _legacy_fingerprint(ctx: RoundContext) -> str:
    """The marker older versions wrote (round and adapter path only)."""
    return f"{ctx.round_no - 1}:{layout.relative(ctx.s.run_dir, ctx.adapters.get(ctx.method.answer_role))}"


def _stale(ctx: RoundContext, fingerprint: str) -> str | None:
    """Why the final folder on disk is not the build `fingerprint` names (the keys that changed), or None when
    it is (or is empty)."""
    from selflengthen.evidence.heldout import differences

    marker = ctx.round_dir / "built_from.txt"
    check_no_links(marker)
    if not marker.exists():
        return None
    text = read_bytes(marker).decode("utf-8", errors="replace")  # a plain file only: a FIFO never blocks
    if text in (fingerprint, _legacy_fingerprint(ctx)):  # a legacy marker is upgraded below
        return None
    try:
        old = json.loads(text)
    except ValueError:
        old = None
    return differences(old, json.loads(fingerprint))


def run_data(ctx: RoundContext) -> dict:
    """Collect + export, then the training rows. Resets the final folder when it was built from other rounds."""
    from selflengthen.evidence import dataset

    if not ctx.cfg("final").enabled:
        return {"skipped": "final.enabled=false"}
    fingerprint = _fingerprint(ctx)  # hashes the adapter's content: once
    why = _stale(ctx, fingerprint)
    if why:
        log.info("the final model on disk was built from another last round or other settings (%s): building "
                 "it again", why)
        reset_dir(ctx.round_dir)
    atomic_write_bytes(ctx.round_dir / "built_from.txt", fingerprint.encode())
    info = dataset.collect(ctx.s, ctx.s.collect, ctx.engine)
    return _data(ctx, info)


@resumable(DATA)
def _data(ctx: RoundContext, folder: Path, info: dict) -> tuple[dict, list[str]]:
    rows = read_jsonl(layout.export_dir(ctx.s.run_dir) / "chat.jsonl")
    role = ctx.method.answer_role
    atomic_write_jsonl(folder / f"{role}.jsonl", [{"id": r.get("id", f"final-{i:05d}"), "messages": r["messages"]}
                                                   for i, r in enumerate(rows)])
    return {"rows": len(rows), "kinds": info.get("kinds", {}), "from_rounds": info.get("from_rounds", 0),
            "from_collect": info.get("from_collect", 0)}, [f"{role}.jsonl"]


def run_train(ctx: RoundContext) -> dict:
    if not ctx.cfg("final").enabled:
        return {"skipped": "final.enabled=false"}
    if ctx.cfg("final").from_adapter == "base":
        ctx.adapters = {k: None for k in ctx.adapters}
    return train.run(ctx, DATA, (ctx.method.answer_role,))


@resumable(MERGE)
def _merge(ctx: RoundContext, folder: Path) -> tuple[dict, list[str]]:
    adapter = ctx.adapters_out.get(ctx.method.answer_role)
    if not adapter or not ctx.cfg("final").merge:
        return {"merged": None, "why": "no adapter" if not adapter else "final.merge=false"}, []
    if not any((Path(adapter) / w).exists() for w in ("adapter_model.safetensors", "adapter_model.bin")):
        return {"merged": None, "why": "the adapter holds no weights (train.backend=fake)"}, []
    start = time.time()
    with ui.progress("final · merging the adapter into the base weights", 1) as bar:
        merge_adapter(ctx.model_path(), adapter, folder / "model")
        bar(1)
    files = sorted(str(p.relative_to(folder)) for p in (folder / "model").rglob("*") if p.is_file())
    return {"merged": layout.relative(ctx.s.run_dir, str(folder / "model")), "merge_seconds": time.time() - start}, files


def run_merge(ctx: RoundContext) -> dict:
    if not ctx.cfg("final").enabled:
        return {"skipped": "final.enabled=false"}
    return _merge(ctx)


def merge_adapter(base: str, adapter: str, out: Path) -> None:
    """Base weights + LoRA adapter -> a plain transformers folder at `out` (built aside, renamed into place)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.parent / f".{out.name}.tmp"
    reset_dir(tmp)  # no link followed (store): save_pretrained below writes into a fresh real folder
    check_no_links(tmp / "config.json")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(tmp))
    reset_dir(out)
    tmp.rename(out)
    fsync_dir(out.parent)


def stages():
    """The final stages, for a method's `final_stages`."""
    from selflengthen.methods.base import Stage

    return (Stage(DATA, run_data, brief_data, config=(("final", Final),)),
            Stage(train.NAME, run_train, lambda sec: sec.get("skipped") or train.brief(sec)),
            Stage(MERGE, run_merge, brief_merge))


def brief_data(section: dict) -> str:
    return section.get("skipped") or f"{section.get('rows', 0)} collected rows"


def brief_merge(section: dict) -> str:
    if section.get("skipped"):
        return section["skipped"]
    return f"merged model in {section['merged']}" if section.get("merged") else f"not merged ({section.get('why', '')})"
