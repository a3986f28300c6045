"""The `selflengthen` console command (pyproject's [project.scripts]): one command, four jobs.

    selflengthen [overrides]            run or resume the configured method (= python -m selflengthen)
    selflengthen eval [overrides]       held-out eval of every finished round (= python -m selflengthen.eval)
    selflengthen collect [overrides]    the final length-controlled data set (= python -m selflengthen.collect)
    selflengthen report [overrides]     the table and plots of a run (= python -m selflengthen.report)

Every job takes the same Hydra overrides; `--help` prints the project's short help (conf/config.yaml,
`hydra.help`). The subcommand is taken off argv before Hydra parses it, so each job sees only overrides.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"run": "selflengthen.__main__", "eval": "selflengthen.eval", "collect": "selflengthen.collect",
            "report": "selflengthen.report"}


def main() -> None:
    name = "run"
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        name = sys.argv.pop(1)
    importlib.import_module(COMMANDS[name]).main()


if __name__ == "__main__":
    main()
