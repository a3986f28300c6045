"""Files the trainers and evals write outside the item logs follow no link either (issue 14, class: any file
the run writes): store.append_bytes (GRPO's metrics.jsonl) and the eval's keyed move."""

from __future__ import annotations

import os

import pytest

from selflengthen.runfolder.store import LinkRefused, StoreError, append_bytes


def test_append_bytes_appends_and_fsyncs(tmp_path):
    append_bytes(tmp_path / "m.jsonl", b"a\n")
    append_bytes(tmp_path / "m.jsonl", b"b\n")
    assert (tmp_path / "m.jsonl").read_bytes() == b"a\nb\n"


def test_append_bytes_onto_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    os.symlink(outside, tmp_path / "m.jsonl")
    with pytest.raises(LinkRefused):
        append_bytes(tmp_path / "m.jsonl", b"x\n")
    assert outside.read_text() == "keep\n"


def test_append_bytes_onto_a_hard_link_or_fifo_is_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    os.link(outside, tmp_path / "m.jsonl")
    with pytest.raises(StoreError, match="hard links"):
        append_bytes(tmp_path / "m.jsonl", b"x\n")
    assert outside.read_text() == "keep\n"
    os.mkfifo(tmp_path / "f.jsonl")
    with pytest.raises(StoreError):  # O_NONBLOCK: refused at once, never a hang
        append_bytes(tmp_path / "f.jsonl", b"x\n")


def test_grpo_metrics_log_through_a_symlink_is_refused(tmp_path):
    grpo = pytest.importorskip("selflengthen.training.grpo_lora")
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"step": 1}\n')
    os.symlink(outside, tmp_path / "metrics.jsonl")
    with pytest.raises(LinkRefused):
        grpo.MetricsLog(tmp_path / "metrics.jsonl", keep_until=0)
    assert outside.read_text() == '{"step": 1}\n'


def test_eval_result_is_not_moved_through_a_linked_folder(tmp_path):
    from selflengthen.evidence import heldout
    from selflengthen.runfolder.store import guard_run_folder, unguard_run_folder

    run = tmp_path / "run"
    current = heldout.eval_file(run, 1)
    current.parent.mkdir(parents=True)
    current.write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, current.parent / heldout.BY_KEY_DIR)
    guard_run_folder(run)
    try:
        with pytest.raises(LinkRefused):
            heldout._make_current(run, 1, {"key": {"a": 2}}, {"key": {"a": 1}})
    finally:
        unguard_run_folder(run)
    assert list(elsewhere.iterdir()) == [] and current.read_text() == "{}"
