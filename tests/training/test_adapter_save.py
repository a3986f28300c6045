"""Training's own writes go through the store: the adapter is written aside and swapped in whole without the
old one being deleted first, metrics.json is atomic, and a disk error while saving is one StoreError paragraph.

Failures are injected where the bytes are written (builtins.open, os.replace, the safetensors writer peft
calls), never by raising the project's own error class.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path

import pytest

from selflengthen.runfolder.store import StoreError
from selflengthen.training.fake import fake_train_lora
from selflengthen.training.save import recover_adapter, save_adapter

ROWS = [{"id": "a", "messages": [{"role": "user", "content": "Write about rivers."},
                                 {"role": "assistant", "content": "Rivers run to the sea."}]}]


def _digest(out: Path) -> str:
    return json.loads((out / "adapter" / "adapter_config.json").read_text())["digest"]


def _fail_open_under(monkeypatch, folder_name: str, err: int = errno.ENOSPC):
    real_open = builtins.open

    def failing_open(file, mode="r", *args, **kwargs):
        if folder_name in Path(os.fspath(file)).parts and any(m in mode for m in "wax"):
            raise OSError(err, os.strerror(err), os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)


def _fail_os_write_under(monkeypatch, folder_name: str):
    """os.open works, os.write into a file under `folder_name` hits a full disk (as the store writes)."""
    real_open, real_write = os.open, os.write
    doomed: set[int] = set()

    def opening(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if folder_name in Path(os.fspath(path)).parts and flags & os.O_WRONLY:
            doomed.add(fd)
        return fd

    def writing(fd, data):
        if fd in doomed:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", opening)
    monkeypatch.setattr(os, "write", writing)


def test_a_killed_swap_keeps_the_old_adapter(tmp_path, monkeypatch):
    fake_train_lora("m", ROWS, tmp_path, None)
    old = _digest(tmp_path)
    real_replace = os.replace

    def killed_after_first_rename(src, dst):  # the process dies between the two renames
        real_replace(src, dst)
        if Path(dst).name == "adapter.old":
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        fake_train_lora("m", ROWS * 2, tmp_path, None)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (tmp_path / "adapter").exists() and (tmp_path / "adapter.old").is_dir()  # the window itself
    recover_adapter(tmp_path)  # what the train stage does before it looks
    assert _digest(tmp_path) == old and not (tmp_path / "adapter.old").exists()
    fake_train_lora("m", ROWS * 2, tmp_path, None)  # and the retry swaps the new one in
    assert _digest(tmp_path) != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "metrics.json"]


def _writer_using_open(folder: Path) -> None:
    """Writes as peft's config writer does: builtins.open."""
    folder.mkdir()
    with open(folder / "adapter_config.json", "w") as f:
        f.write("{}")


@pytest.mark.parametrize("inject", ["open", "os.write"])
def test_disk_full_while_saving_is_one_clear_error_and_keeps_the_old_adapter(tmp_path, monkeypatch, inject):
    fake_train_lora("m", ROWS, tmp_path, None)
    old, metrics = _digest(tmp_path), (tmp_path / "metrics.json").read_text()
    if inject == "open":
        _fail_open_under(monkeypatch, "adapter.new")
        with pytest.raises(StoreError) as err:
            save_adapter(tmp_path, _writer_using_open)
    else:
        _fail_os_write_under(monkeypatch, "adapter.new")
        with pytest.raises(StoreError) as err:
            fake_train_lora("m", ROWS * 2, tmp_path, None)
    msg = str(err.value)
    assert "disk is full" in msg and "adapter" in msg and "\n" not in msg
    assert "Traceback" not in msg
    monkeypatch.undo()
    assert _digest(tmp_path) == old and (tmp_path / "metrics.json").read_text() == metrics
    assert not (tmp_path / "adapter.new").exists()


def test_metrics_and_adapter_refuse_a_link(tmp_path):
    from selflengthen.runfolder.store import LinkRefused, guard_run_folder, unguard_run_folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "train" / "generator").symlink_to(elsewhere, target_is_directory=True)
    guard_run_folder(run)
    try:
        with pytest.raises(LinkRefused):
            fake_train_lora("m", ROWS, run / "train" / "generator", None)
    finally:
        unguard_run_folder(run)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("where", ["adapter.new", "checkpoints"])
def test_real_trainer_disk_full_in_the_safetensors_writer(tiny_model_dir, tmp_path, monkeypatch, where):
    """train_lora on the tiny model: the weights writer peft calls hits a full disk while saving the adapter
    (or a Trainer checkpoint) -> StoreError, the previous adapter and metrics untouched, nothing half-written
    in place."""
    import peft.peft_model

    from selflengthen.training.sft_lora import TrainConfig, train_lora

    cfg = TrainConfig(max_steps=1, grad_accum=1, save_steps=1000, warmup_ratio=0.0)
    train_lora(str(tiny_model_dir), ROWS, tmp_path, None, cfg)
    before = {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()}
    metrics = (tmp_path / "metrics.json").read_text()
    real = peft.peft_model.safe_save_file

    def full_under(tensors, filename, *args, **kwargs):
        if where in Path(filename).parts:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full_under)
    with pytest.raises(StoreError) as err:
        train_lora(str(tiny_model_dir), ROWS * 2, tmp_path, None, cfg)
    assert "disk is full" in str(err.value) and str(tmp_path / where.replace(".new", "")) in str(err.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()} == before
    assert (tmp_path / "metrics.json").read_text() == metrics
    assert not (tmp_path / "adapter.new").exists()
