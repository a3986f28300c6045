"""`selflengthen report [hydra overrides]`: the tables, report.json and the plots of a run (no model).

The library is evidence/tables.py; this file holds the run lock and the console lines.
"""

from __future__ import annotations

import logging
from pathlib import Path

from selflengthen import cli
from selflengthen.evidence import tables
from selflengthen.support import ui

log = logging.getLogger(__name__)


def run_report(s) -> dict:
    """The tables, report.json and the plots of the run `s` names, written under the run lock (one writer at a
    time, and no write through a link inside the run folder)."""
    from selflengthen.runfolder.store import RunLock

    with RunLock(s.run_dir):
        report = tables.write_report(s.run_dir, s.method)
    if not report["rounds"]:
        log.warning("%s has no finished round yet (check run.name / experiment=)", s.run_dir)
    ui.console.print(f"report: {s.run_dir / tables.REPORT_DIR} (" + ", ".join(Path(p).name for p in report["plots"]) + ")")
    return report


def main() -> None:
    cli.main("report", run_report)


if __name__ == "__main__":
    main()
