"""What the user sees: one rich console, a progress bar per long stage, a summary table per round."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False))
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "transformers.tokenization_utils_base"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Bar:
    """`bar(n)` advances by n; `bar.set(done, total)` jumps (for work measured in steps, like training)."""

    def __init__(self, progress: Progress | None = None, task=None):
        self._progress, self._task = progress, task

    def __call__(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def set(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=max(total, done, 1))


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Bar]:
    """A progress bar for one stage. Quiet when not on a terminal (CI, log files) or SELFLENGTHEN_QUIET=1."""
    quiet = not console.is_terminal or os.environ.get("SELFLENGTHEN_QUIET") == "1"
    if quiet:
        yield Bar()
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        yield Bar(bar, bar.add_task(description, total=total))


def round_table(summary: dict, method) -> Table:
    """The round's table: one line per stage of the method, from the stage's own summary section."""
    t = Table(title=f"Round {summary['round']}", show_header=True, header_style="bold")
    t.add_column("stage")
    t.add_column("result", justify="right")
    t.add_column("seconds", justify="right")
    sec = summary.get("seconds", {})
    sections = summary.get("stages", {})
    for stage in method.stages:
        section = sections.get(stage.name) or {}
        seconds = sec.get(stage.name, sum(v for k, v in sec.items() if k.startswith(stage.name + "_")))
        t.add_row(stage.name.replace("_", " "), stage.brief(section), f"{seconds:.1f}")
    rej = summary.get("rejections", {})
    if rej:
        t.caption = "rejections: " + ", ".join(f"{k} {v}" for k, v in sorted(rej.items(), key=lambda kv: -kv[1]))
    return t


def print_error(message: str) -> None:
    """Print one error paragraph. The message is plain text, never markup: a path holding `[/red]` or
    `:smile:` prints as written (a Text object is not parsed for markup or emoji codes)."""
    console.print(Text.assemble(("error:", "bold red"), " ", str(message)), highlight=False)
    sys.stderr.flush()
