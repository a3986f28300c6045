"""Everything that touches the disk: atomic files, durable item logs, stage records, the run lock.

Rules (see docs/ARCHITECTURE.md):
- a file is written to a temp name, flushed, fsynced and renamed, so a reader sees all of it or none;
- a generation stage appends its results to an item log in small durable batches, every record keyed by a
  stable id, so a restart skips what is there and never duplicates it; a torn last line (the process
  died mid-write) is cut off and redone;
- a stage's `done.json` is written last and carries a checksum of each artifact: a stage whose artifact
  no longer matches is reported and redone, never used.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

log = logging.getLogger(__name__)

DONE = "done.json"


class StoreError(RuntimeError):
    """A problem with the run folder that the user must act on (the message says how)."""


class CorruptArtifact(StoreError):
    pass


class RunLocked(StoreError):
    pass


def _disk_error(path: Path, exc: OSError) -> StoreError:
    if exc.errno == errno.ENOSPC:
        why = "the disk is full"
        fix = "free some space (or point run.root at a bigger disk) and run the same command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder is not writable"
        fix = "fix the folder's permissions (or choose another run.root) and run the same command again"
    else:
        why = os.strerror(exc.errno or 0) or str(exc)
        fix = "fix the cause and run the same command again"
    return StoreError(
        f"Could not write {path}: {why} ({exc}). Nothing finished was lost: every artifact written before "
        f"stays as it was, and a half-written file never replaces a good one. To go on, {fix}; the run "
        f"resumes from its last saved item."
    )


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """temp file -> flush -> fsync -> rename -> fsync(dir). On failure the old file is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, exc) from exc


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(path, data.encode("utf-8"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptArtifact(f"{path} is not valid JSON ({exc})") from exc


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CorruptArtifact(f"{path} line {n} is not valid JSON ({exc})") from exc
    return rows


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ItemLog:
    """An append-only JSONL file of records keyed by `id`, appended in durable batches.

    Opening it reads what is there: a torn last line (no newline, or not JSON) is cut off — the batch it
    belonged to is simply redone. A bad line in the middle means the file was damaged some other way:
    that is reported and the whole log is started again (`CorruptArtifact` is caught by `open_log`).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: list[dict] = []
        self.by_id: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good = 0
        lines = raw.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and line == b"":
                break
            try:
                rec = json.loads(line.decode("utf-8"))
                if not isinstance(rec, dict) or "id" not in rec:
                    raise ValueError("record without id")
            except (UnicodeDecodeError, ValueError) as exc:
                if last:  # torn tail: the process died mid-append
                    log.warning("%s: cut off a torn last record (%d bytes); it will be redone", self.path,
                                len(line))
                    break
                raise CorruptArtifact(f"{self.path} line {i + 1} is damaged ({exc})") from exc
            if last:  # a complete record but no newline: also a torn append
                log.warning("%s: cut off an unterminated last record; it will be redone", self.path)
                break
            good += len(line) + 1
            if rec["id"] not in self.by_id:  # first write wins; a duplicate is never used twice
                self.by_id[rec["id"]] = rec
                self.records.append(rec)
        if good != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.by_id

    def __len__(self) -> int:
        return len(self.records)

    def append(self, records: list[dict]) -> None:
        """Append a batch and fsync it. A failed write leaves the log as it was (truncated back)."""
        fresh = [r for r in records if r["id"] not in self.by_id]
        if not fresh:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            try:
                with open(self.path, "r+b") as f:
                    f.truncate(size)
            except OSError:
                pass
            raise _disk_error(self.path, exc) from exc
        for r in fresh:
            self.by_id[r["id"]] = r
            self.records.append(r)


def open_log(path: Path) -> ItemLog:
    """Open an item log; a damaged one is reported, set aside as `<name>.corrupt` and started again."""
    try:
        return ItemLog(path)
    except CorruptArtifact as exc:
        bad = Path(path).with_name(Path(path).name + ".corrupt")
        log.warning("%s — set aside as %s; the stage redoes its items", exc, bad.name)
        os.replace(path, bad)
        return ItemLog(path)


def stage_done(stage_dir: Path) -> Optional[dict]:
    """The stage's done record if the stage finished and all its artifacts still match; else None.

    A record whose artifacts are missing or changed is reported, removed, and the stage is redone.
    """
    marker = Path(stage_dir) / DONE
    if not marker.exists():
        return None
    try:
        record = read_json(marker)
        for name, digest in record.get("files", {}).items():
            f = Path(stage_dir) / name
            if not f.exists():
                raise CorruptArtifact(f"{f} is missing")
            if sha256_file(f) != digest:
                raise CorruptArtifact(f"{f} does not match its checksum in {marker}")
    except CorruptArtifact as exc:
        log.warning("stage %s is not usable (%s): redoing it", Path(stage_dir).name, exc)
        marker.unlink(missing_ok=True)
        return None
    return record


def mark_done(stage_dir: Path, files: Iterable[str], **info: Any) -> dict:
    """Write `done.json` (last!) with a checksum of every artifact the stage produced."""
    stage_dir = Path(stage_dir)
    record = {"files": {name: sha256_file(stage_dir / name) for name in files}, "finished": time.time(), **info}
    atomic_write_json(stage_dir / DONE, record)
    return record


def write_probe(folder: Path) -> None:
    """Make `folder` if needed and prove it is writable (raises OSError otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


class RunLock:
    """One process per run folder. An flock dies with its process, so a lock left by a dead process
    is stale by construction and is simply taken over (and reported)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "lock"
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            write_probe(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"Cannot use the run folder {self.path.parent}: {exc.strerror or exc}. Check that it exists, "
                f"is readable and writable by you (or choose another with run.root=... / run.name=...)."
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(
                f"The run folder {self.path.parent} is in use by another process ({holder}). Two processes "
                f"on one run would overwrite each other's work. Wait for it to finish, stop it, or start a "
                f"separate run with run.name=<another name>."
            ) from None
        previous = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
        if previous:
            log.warning("took over a stale lock on %s (left by %s, no longer running)", self.path.parent, previous)
        info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty lock file means "released cleanly"
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def reset_dir(path: Path) -> None:
    """Remove a folder whose content is being redone from scratch."""
    if Path(path).exists():
        shutil.rmtree(path)


def iter_chunks(items: list, size: int) -> Iterator[list]:
    size = max(1, size)
    for i in range(0, len(items), size):
        yield items[i:i + size]
