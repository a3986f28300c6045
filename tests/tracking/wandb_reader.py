"""Read back what W&B wrote offline: the history rows of `run-<id>.wandb` files (no server needed).

The file is W&B's transaction log: a 7-byte header (':W&B', magic 0xBEE1, version 0), then LevelDB-log
blocks of 32 KiB, each record a 7-byte header (crc32, length, type: full/first/middle/last) and a piece of a
serialised `wandb_internal_pb2.Record`. Test-only: wandb 0.31 no longer ships a Python reader for it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, (ident, magic, version)
    pos, pieces = 7, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left  # zero padding to the end of the block
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            pieces = [chunk]
        elif kind == FIRST:
            pieces = [chunk]
            continue
        elif kind == MIDDLE:
            pieces.append(chunk)
            continue
        else:
            pieces.append(chunk)
        rec = pb.Record()
        rec.ParseFromString(b"".join(pieces))
        pieces = []
        yield rec


def history(path: Path) -> list[dict]:
    """Every `wandb.log` row of the file, as {key: value}."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in rec.history.item})
    return rows


def offline_runs(wandb_dir: Path) -> list[Path]:
    """The `.wandb` files of every offline run under `wandb_dir`, oldest first."""
    return sorted(Path(wandb_dir).glob("**/offline-run-*/run-*.wandb"))
