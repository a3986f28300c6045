"""How a trainer puts its adapter on disk: whole or not at all, and never at the cost of the one before.

`save_adapter(out_dir, write)` lets `write(folder)` fill `out_dir/adapter.new/`, fsyncs every file, then
swaps it in: the old `adapter/` (if any) is renamed to `adapter.old/`, the new one to `adapter/`, and only
then is the old one deleted. A crash at any point leaves a whole adapter at `adapter/` or at `adapter.old/`;
`recover_adapter(out_dir)` (called before every save and by the train stage before it looks) puts the old
one back in the second case. A folder cannot be renamed over a non-empty one, which is why the old one
steps aside instead of being deleted first.

Disk errors (full, read-only, I/O) become one `StoreError` paragraph naming the folder and the fix; a link
in the adapter's place or on the way to it is refused (`LinkRefused`) before anything is written.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

from selflengthen.runfolder.store import _disk_error, atomic_write_json, check_no_links, fsync_dir, reset_dir

log = logging.getLogger(__name__)

ADAPTER, NEW, OLD = "adapter", "adapter.new", "adapter.old"


def adapter_digest(folder: Path) -> str:
    """One sha256 over every file of an adapter folder (names and bytes): trainers put it in metrics.json,
    so a stage that finds an adapter without its done record can tell whether it is the one trained."""
    import hashlib

    from selflengthen.runfolder.store import sha256_file

    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder)}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def recover_adapter(out_dir: Path) -> None:
    """After a crash mid-swap: `adapter/` missing but `adapter.old/` there -> the old one goes back."""
    out_dir = Path(out_dir)
    final, old = out_dir / ADAPTER, out_dir / OLD
    check_no_links(final)
    check_no_links(old)
    if old.is_dir() and not final.exists():
        os.replace(old, final)
        fsync_dir(out_dir)
        log.warning("%s: a crash interrupted an adapter swap; the previous adapter was put back", out_dir)
    elif old.exists():  # the swap finished; only the clean-up of the old one was cut off
        shutil.rmtree(old)


def save_adapter(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """`write(folder)` saves the adapter into a fresh folder; it becomes `out_dir/adapter` whole. Returns it."""
    out_dir = Path(out_dir)
    final, new, old = out_dir / ADAPTER, out_dir / NEW, out_dir / OLD
    for p in (final, new, old):
        check_no_links(p)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        recover_adapter(out_dir)
        reset_dir(new)  # a half-written one from a killed save
        write(new)
        for f in sorted(new.rglob("*")):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(new)
        if final.exists():
            os.replace(final, old)  # the old adapter steps aside, whole ...
        os.replace(new, final)  # ... the new one takes its place ...
        fsync_dir(out_dir)
        if old.exists():
            shutil.rmtree(old)  # ... and only now is the old one gone
    except Exception as exc:  # a failed save leaves what was there before, and no half-written folder
        shutil.rmtree(new, ignore_errors=True)
        if old.is_dir() and not final.exists():  # failed between the two renames: the old one goes back
            os.replace(old, final)
        if isinstance(exc, OSError):
            raise _disk_error(final, exc, "save the adapter to") from exc
        raise
    return final


def _resume_key(key_file: Path):
    """The key recorded in resume_key.json; None when it is missing or damaged (the checkpoints are then
    cleared and training starts afresh). Anything but a plain file there is refused (store.NotAFile)."""
    from selflengthen.runfolder.store import CorruptArtifact, read_json

    if not os.path.lexists(key_file):
        return None
    try:
        doc = read_json(key_file)
    except CorruptArtifact as exc:
        log.warning("%s", exc)
        return None
    return doc.get("key") if isinstance(doc, dict) else None


def prepare_resume(ckpt_dir: Path, key: str, what: str) -> Optional[int]:
    """Step of the checkpoint in `ckpt_dir` to resume `what` ("training", "GRPO") from, or None to start
    fresh. `key` says what the checkpoints must have been made from; checkpoints of another key are cleared."""
    key_file = ckpt_dir / "resume_key.json"
    steps = sorted(int(p.name.split("-")[1]) for p in ckpt_dir.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit())
    if steps:
        old = _resume_key(key_file)
        if old == key:
            log.info("resuming %s from %s", what, ckpt_dir / f"checkpoint-{steps[-1]}")
            return steps[-1]
        log.warning("checkpoints in %s were made from other data or settings; starting %s afresh", ckpt_dir, what)
        reset_dir(ckpt_dir)
    atomic_write_json(key_file, {"key": key})
    return None
