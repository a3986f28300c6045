"""Everything that touches the disk: atomic files, durable item logs, stage records, the run lock.

Rules (see docs/ARCHITECTURE.md):
- a file is written to a temp name, flushed, fsynced and renamed, so a reader sees all of it or none;
- a generation stage appends its results to an item log in small durable batches, every record keyed by a
  stable id, so a restart skips what is there and never duplicates it; a torn last line (the process
  died mid-write) is cut off and redone;
- a stage's `done.json` is written last and carries a checksum of each artifact: a stage whose artifact
  no longer matches is reported and redone, never used;
- no write goes through a link. Every file is opened with O_NOFOLLOW (a symlink in its place is refused
  before anything is written), and inside a run folder (registered by `RunLock`) every folder on the way
  down is checked too, so a stage folder replaced by a link to elsewhere is refused, never written into.
  The run folder itself may be a link (that is how a run is put on another disk: the user's own choice,
  like `run.root`). Files changed in place (the lock, item logs) must also have no second hard link, since
  that would share their bytes with a name outside. Reads may follow links: they change nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

log = logging.getLogger(__name__)

DONE = "done.json"
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_NAME_MAX = 255  # bytes in one file name on every common Linux/macOS file system


class StoreError(RuntimeError):
    """A problem with the run folder that the user must act on (the message says how)."""


class CorruptArtifact(StoreError):
    pass


class RunLocked(StoreError):
    pass


class LinkRefused(StoreError):
    """A path the run would write is (or passes through) a link; nothing was written."""


class NotAFile(StoreError):
    """A file the run reads back is not a plain file (a folder, a pipe, a socket, a device), or a file stands
    where the run keeps a folder on the way to it. It is never opened (a pipe would block the run) and never
    removed by the run: the message says what it is to the run and what to do."""


# --- user-given names -----------------------------------------------------------------------------------

def check_run_name(name: str) -> None:
    """Raise StoreError unless `name` is one plain folder name (it becomes `run.root/<name>`)."""
    why = _bad_name(name)
    if why:
        raise StoreError(
            f"run.name={name!r} is not a plain folder name: {why}. A run name names one folder inside "
            f"run.root, so it cannot be empty, be '.' or '..', hold '/' or '\\', start with '~', or hold "
            f"control characters; to keep runs somewhere else, set run.root=<folder> instead. "
            f"Fix: choose a name such as run.name=my_run.")


def _bad_name(name: object) -> str:
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not text"
    if not name.strip():
        return "it is empty"
    if name in (".", ".."):
        return "it names the current or the parent folder"
    if "/" in name or "\\" in name or os.path.isabs(name):
        return "it holds a path separator, so it would point outside run.root"
    if name.startswith("~"):
        return "it starts with '~', which a shell would read as a home folder"
    if re.search(r"[\x00-\x1f\x7f]", name):
        return "it holds a control character (NUL, newline, ...)"
    if len(name.encode("utf-8")) > _NAME_MAX:
        return f"it is longer than {_NAME_MAX} bytes, the longest file name the disk allows"
    return ""


def check_run_root(root: str) -> None:
    """Raise StoreError unless `root` can be the folder that holds runs: non-empty text without control
    characters, and, where something already exists there, a folder (links to folders are fine)."""
    if not isinstance(root, str) or not root.strip():
        why = "it is empty"
    elif re.search(r"[\x00-\x1f\x7f]", root):
        why = "it holds a control character (NUL, newline, ...)"
    elif Path(root).expanduser().exists() and not Path(root).expanduser().is_dir():
        why = f"{Path(root).expanduser()} exists and is not a folder"
    else:
        return
    raise StoreError(
        f"run.root={root!r} cannot hold runs: {why}. run.root is the folder under which each run gets its "
        f"own folder run.root/<run.name>. Fix: set run.root to a folder you can write "
        f"to (it is made if missing), e.g. run.root=iterations.")


# --- links: the run never writes through one ------------------------------------------------------------

_RUN_FOLDERS: set[str] = set()  # absolute paths of run folders whose inside must hold no links


def guard_run_folder(run_dir: Path) -> None:
    """From now on, refuse a link anywhere below `run_dir` on the way to a file the store writes.
    `RunLock.acquire` calls this; call it yourself only to guard a folder without locking it."""
    _RUN_FOLDERS.add(os.path.abspath(run_dir))


def unguard_run_folder(run_dir: Path) -> None:
    _RUN_FOLDERS.discard(os.path.abspath(run_dir))


def check_no_links(path: Path) -> None:
    """Raise LinkRefused if `path` is a symlink, or if it lies inside a guarded run folder and a folder
    between the run folder and `path` is a link (or `..` leads out through one). Parts that do not exist
    yet are fine: the store makes them as real folders."""
    given = os.path.join(os.getcwd(), os.fspath(path))
    full = os.path.normpath(given)
    for root in _RUN_FOLDERS:
        if full.startswith(root.rstrip(os.sep) + os.sep):
            _check_inside(path, root, full, given)
    if _is_link(full):
        raise _link_error(path, full)


def _check_inside(path: Path, root: str, full: str, given: str) -> None:
    here = root
    for part in Path(os.path.relpath(full, root)).parts[:-1]:
        here = os.path.join(here, part)
        if _is_link(here):
            raise _link_error(path, here)
        if not os.path.isdir(here):
            break  # missing (made below as a real folder) or a file (the write fails with a clear error)
    # `..` is resolved by the kernel after the links before it, not lexically: compare the real place
    real_parent = os.path.realpath(os.path.dirname(given))
    expected = os.path.join(os.path.realpath(root), os.path.relpath(os.path.dirname(full), root))
    if os.path.normpath(real_parent) != os.path.normpath(expected):
        raise _link_error(path, os.path.dirname(given))


def _is_link(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:  # missing, or a parent is not a folder: nothing to follow
        return False


def _link_error(path: Path, link: str) -> LinkRefused:
    try:
        where = f" (it points to {os.readlink(link)})"
    except OSError:
        where = ""
    what = "the file itself is" if os.path.normpath(link) == os.path.abspath(path) else f"{link} is"
    return LinkRefused(
        f"Refusing to write {path}: {what} a link{where}. The run never writes through links, so that "
        f"nothing outside the run folder is changed by accident; nothing was written. Fix: remove the link "
        f"(`rm {link}` removes only the link, not what it points to) or put a real file or folder in its "
        f"place, then run the same command again.")


def _open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open that never follows a link in the last place; a link there is a LinkRefused."""
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or _is_link(os.fspath(path)):
            raise _link_error(path, os.path.abspath(path)) from None
        raise


def _check_own_file(fd: int, path: Path) -> None:
    """A file changed in place must be a plain file whose bytes no other name shares."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"Refusing to write {path}: it is not a regular file. The run only writes its own "
                         f"plain files; nothing was written. Fix: remove it and run the same command again.")
    if st.st_nlink > 1:
        raise StoreError(
            f"Refusing to change {path} in place: it has {st.st_nlink} hard links, so another name (maybe "
            f"outside the run folder) shares its bytes and would change too; nothing was written. Fix: give it "
            f"its own copy (`cp {path} {path}.copy && mv {path}.copy {path}`) and run the same command again.")


def _disk_error(path: Path, exc: OSError, doing: str = "write") -> StoreError:
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        why = "the disk is full"
        fix = "free some space (or point run.root at a bigger disk) and run the same command again"
    elif exc.errno == errno.EROFS:
        why = "the file system is read-only"
        fix = "remount it writable (or choose another run.root) and run the same command again"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = "the folder is not writable"
        fix = "fix the folder's permissions (or choose another run.root) and run the same command again"
    elif exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY):
        from selflengthen.runfolder.records import describe

        culprit = _blocking_path(path)
        what, fix_ = describe(culprit)
        if culprit != Path(path):
            why = f"{culprit} is a file where the run keeps a folder"
        elif os.path.isdir(path):
            why = f"it is a folder where the run keeps a file ({what})"
        else:
            why = f"it is not the kind of file the run keeps there ({what})"
        fix = f"remove {culprit} (or put back what was there) and run the same command again ({fix_})"
    elif exc.errno == errno.EIO:
        why = "the disk reported an input/output error"
        fix = "check the disk (e.g. `dmesg`, or the network file system's health) and run the same command again"
    else:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        fix = "fix the cause and run the same command again"
    return StoreError(
        f"Could not {doing} {path}: {why} ({exc.strerror or exc}). Nothing finished was lost: every artifact "
        f"written before stays as it was, and a half-written file never replaces a good one. Fix: {fix}; "
        f"the run resumes from its last saved item."
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- atomic files -----------------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """temp file -> write -> fsync -> rename -> fsync(dir). On failure the old file is untouched.

    The temp file is made new (O_EXCL, O_NOFOLLOW), and a link in the target's place or on the way to it
    is refused before anything is written."""
    path = Path(path)
    check_no_links(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    made = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_dead_temps(path)
        fd = _open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        made = True
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        check_no_links(path)  # again just before the rename: nothing may have become a link meanwhile
        os.replace(tmp, path)
        made = False
        fsync_dir(path.parent)
    except OSError as exc:
        raise _disk_error(path, exc) from exc
    finally:
        if made:
            tmp.unlink(missing_ok=True)


def _drop_dead_temps(path: Path) -> None:
    """Remove temp files of `path` left by a writer that was killed (its pid, in the name, is gone)."""
    prefix = f".{path.name}.tmp-"
    with os.scandir(path.parent) as entries:
        stale = [e.name for e in entries if e.name.startswith(prefix)]
    for name in stale:
        pid = name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            (path.parent / name).unlink(missing_ok=True)  # unlink removes a link itself, never its target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(path, data.encode("utf-8"))


def _blocking_path(path: Path) -> Path:
    """The first part of `path` that stands in the way: a file where a folder must be, else `path` itself."""
    path = Path(path)
    for parent in reversed(path.parents):
        if os.path.lexists(parent) and not os.path.isdir(parent):
            return parent
    return path


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _not_a_file(path: Path, why: str) -> NotAFile:
    from selflengthen.runfolder.records import describe

    what, fix = describe(Path(path))
    return NotAFile(f"Cannot read {path} ({what}): {why}. The run reads back only plain files it wrote itself "
                    f"(a pipe or a device could block it forever), so it was not opened, and nothing was changed. "
                    f"Fix: {fix}.")


def open_for_read(path: Path) -> int:
    """A read-only descriptor of the plain file `path` (links are followed: reading changes nothing). Anything
    else is refused before it is opened (NotAFile); a missing file is FileNotFoundError."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise _not_a_file(path, f"it is a link to nothing ({os.readlink(path)})") from None
        raise
    except NotADirectoryError:
        culprit = _blocking_path(path)
        raise _not_a_file(path, f"{culprit} is a file where the run keeps a folder") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _not_a_file(path, "it is a loop of links") from None
        raise _disk_error(path, exc, "read") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_file(path, f"it is {_kind_of(st.st_mode)}, not a file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _disk_error(path, exc, "read") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the stat and the open
        os.close(fd)
        raise _not_a_file(path, "it changed into something other than a file while it was being opened")
    return fd


def check_folder(folder: Path) -> None:
    """NotAFile when `folder` (or a folder on the way to it) exists as something other than a folder: a
    reader that globs or tests files below it would otherwise see "nothing there" and go on silently."""
    culprit = _blocking_path(Path(folder) / "x")
    if culprit != Path(folder) / "x":
        from selflengthen.runfolder.records import describe

        what, fix = describe(culprit)
        raise NotAFile(f"Cannot read {folder}: {culprit} is a file where the run keeps a folder. The run reads "
                       f"back only what it wrote itself, so nothing was opened or changed. Fix: remove {culprit} "
                       f"(or put back the folder that was there) and run the same command again; if the run "
                       f"folder cannot be trusted, start a separate run with run.name=<new name>.")


def read_bytes(path: Path) -> bytes:
    """The bytes of the plain file `path` (see open_for_read)."""
    fd = open_for_read(path)
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _disk_error(Path(path), exc, "read") from exc


def _damaged(path: Path, why: str) -> CorruptArtifact:
    from selflengthen.runfolder.records import describe

    what, fix = describe(Path(path))
    return CorruptArtifact(f"{path} ({what}) is damaged: {why}. Fix: {fix}.")


def read_json(path: Path) -> Any:
    """The JSON value in the plain file `path`: NotAFile for anything but a plain file, CorruptArtifact for
    text that is not JSON (both name the file and the fix)."""
    try:
        return json.loads(read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, f"it is not valid JSON ({exc})") from exc


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL artifact: each line one JSON object (else CorruptArtifact naming the line)."""
    rows = []
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"it is not UTF-8 text ({exc.reason})") from exc
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _damaged(path, f"line {n} is not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise _damaged(path, f"line {n} is not a JSON object")
        rows.append(row)
    return rows


def check_record(path: Path, data: Any, schema) -> dict:
    """`data` (read from `path`) if it fits `schema` (a records.py model); else a CorruptArtifact naming the
    file, the problem and the fix."""
    from selflengthen.runfolder.records import describe, problem

    why = problem(data, schema)
    if why is None:
        return data
    what, fix = describe(Path(path))
    raise CorruptArtifact(f"{path} ({what}) has the wrong shape: {why}. Fix: {fix}.")


def read_record(path: Path, schema) -> dict:
    """Read and check one record of the run (a plain file holding one JSON object that fits `schema`)."""
    return check_record(Path(path), read_json(path), schema)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    fd = open_for_read(path)
    try:
        with os.fdopen(fd, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise _disk_error(Path(path), exc, "read") from exc
    return h.hexdigest()


# --- item logs --------------------------------------------------------------------------------------------

class ItemLog:
    """An append-only JSONL file of records keyed by `id`, appended in durable batches.

    Opening it reads what is there: a torn last line (no newline, or not JSON) is cut off — the batch it
    belonged to is simply redone. A bad line in the middle means the file was damaged some other way:
    that is reported and the whole log is started again (`CorruptArtifact` is caught by `open_log`).
    A log that is a link, or shares its bytes through a hard link, is refused (LinkRefused / StoreError).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: list[dict] = []
        self.by_id: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        check_no_links(self.path)
        try:
            fd = _open_nofollow(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _disk_error(self.path, exc, "read") from exc
        try:
            _check_own_file(fd, self.path)
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read()
            good = self._parse(raw)
            if good != len(raw):
                self._truncate(fd, good)
        finally:
            os.close(fd)

    def _parse(self, raw: bytes) -> int:
        """Keep every whole record; return the byte length of the good part."""
        from selflengthen.runfolder.records import item_problem

        good = 0
        lines = raw.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and line == b"":
                break
            try:
                rec = json.loads(line.decode("utf-8"))
                problem = item_problem(self.path.name, rec)
                if problem:
                    raise ValueError(problem)
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
        return good

    def _truncate(self, read_fd: int, size: int) -> None:
        try:
            fd = _open_nofollow(self.path, os.O_WRONLY)
            try:
                a, b = os.fstat(read_fd), os.fstat(fd)
                if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):  # swapped while we read: touch nothing
                    raise StoreError(f"{self.path} was replaced while it was being read; run the same "
                                     f"command again (and make sure no other program writes the run folder).")
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _disk_error(self.path, exc, "repair") from exc

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.by_id

    def __len__(self) -> int:
        return len(self.records)

    def append(self, records: list[dict]) -> None:
        """Append a batch and fsync it. A failed write leaves the log as it was (truncated back)."""
        fresh = [r for r in records if r["id"] not in self.by_id]
        if not fresh:
            return
        append_bytes(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh).encode("utf-8"))
        for r in fresh:
            self.by_id[r["id"]] = r
            self.records.append(r)


def append_bytes(path: Path, data: bytes) -> None:
    """Append `data` to a plain file of the run (a trainer's metrics log) and fsync it: no link followed, no
    file whose bytes another name shares; a failed write leaves the file as it was."""
    path = Path(path)
    check_no_links(path)
    fd = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
        _check_own_file(fd, path)
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # the file as it was: no torn record
            raise
    except OSError as exc:  # one message for every step: opening, writing or syncing
        raise _disk_error(path, exc, "append to") from exc
    finally:
        if fd is not None:
            os.close(fd)


def open_log(path: Path) -> ItemLog:
    """Open an item log; a damaged one is reported, set aside as `<name>.corrupt` and started again."""
    try:
        return ItemLog(path)
    except CorruptArtifact as exc:
        bad = Path(path).with_name(Path(path).name + ".corrupt")
        log.warning("%s — set aside as %s; the stage redoes its items", exc, bad.name)
        check_no_links(bad)
        try:
            os.replace(path, bad)
        except OSError as err:
            raise _disk_error(Path(path), err, "set aside") from err
        return ItemLog(path)


# --- stage records ----------------------------------------------------------------------------------------

def stage_done(stage_dir: Path) -> Optional[dict]:
    """The stage's done record if the stage finished and all its artifacts still match; else None.

    A record whose artifacts are missing or changed is reported, removed, and the stage is redone.
    A stage folder that is a link is refused (LinkRefused) rather than used or written into.
    """
    marker = Path(stage_dir) / DONE
    check_no_links(marker)
    check_folder(Path(stage_dir))
    if not os.path.lexists(marker):
        return None
    from selflengthen.runfolder.records import done_schema

    try:
        record = check_record(marker, read_json(marker), done_schema(marker))
        for name, digest in record["files"].items():
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
    """Make `folder` if needed and prove it is writable (raises OSError otherwise; LinkRefused for a link
    on the way inside a guarded run folder)."""
    folder = Path(folder)
    check_no_links(folder / ".probe")
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".probe-{os.getpid()}-{os.urandom(4).hex()}"
    os.close(_open_nofollow(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    probe.unlink()


def reset_dir(path: Path) -> None:
    """Remove a folder whose content is being redone from scratch. A link in its place (or on the way to
    it inside the run folder) is refused: removing through it would delete files elsewhere."""
    path = Path(path)
    check_no_links(path)
    try:
        if path.exists():
            shutil.rmtree(path)  # rmtree removes links inside the folder, never what they point to
    except OSError as exc:
        raise _disk_error(path, exc, "remove") from exc


# --- the run lock -----------------------------------------------------------------------------------------

_HOST_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SINCE_RE = re.compile(r"[0-9: -]{1,32}")


class RunLock:
    """One process per run folder. An flock dies with its process, so a lock left by a dead process
    is stale by construction and is simply taken over (and reported).

    The lock file holds a small JSON written by us ({"pid", "host", "since"}). Only those fields are ever
    shown, and only from a plain file: a lock that is a link is refused before it is opened for writing,
    and nothing else of a lock file's contents is printed or logged. Holding the lock also guards the run
    folder against links (`guard_run_folder`)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "lock"
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        guard_run_folder(self.path.parent)
        try:
            fd = self._open()
        except BaseException:
            unguard_run_folder(self.path.parent)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd) or "an unknown process"
            os.close(fd)
            unguard_run_folder(self.path.parent)
            raise RunLocked(
                f"The run folder {self.path.parent} is in use by another process ({holder}). Two processes "
                f"on one run would overwrite each other's work. Wait for it to finish, stop it, or start a "
                f"separate run with run.name=<another name>."
            ) from None
        if os.fstat(fd).st_size:  # a cleanly released lock is empty
            log.warning("took over a stale lock on %s (left by %s, no longer running)", self.path.parent,
                        _lock_holder(fd) or "an unknown process")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _open(self) -> int:
        try:
            write_probe(self.path.parent)
            check_no_links(self.path)
            fd = _open_nofollow(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise StoreError(
                f"Cannot use the run folder {self.path.parent}: {exc.strerror or exc}. Check that it exists, "
                f"is readable and writable by you (or choose another with run.root=... / run.name=...)."
            ) from exc
        try:
            _check_own_file(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty lock file means "released cleanly"
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            unguard_run_folder(self.path.parent)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    """'pid N on HOST since TIME' from our own small JSON, or '' — never the raw bytes of the file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        pid, host, since = info["pid"], info["host"], info["since"]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return ""
    if not (type(pid) is int and isinstance(host, str) and isinstance(since, str)
            and _HOST_RE.fullmatch(host) and _SINCE_RE.fullmatch(since)):
        return ""
    return f"pid {pid} on {host} since {since}"


def iter_chunks(items: list, size: int) -> Iterator[list]:
    size = max(1, size)
    for i in range(0, len(items), size):
        yield items[i:i + size]
