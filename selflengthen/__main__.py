"""The package entry: `python -m selflengthen [eval|collect|report] [hydra overrides]` and the `selflengthen`
console command (pyproject's [project.scripts]): one command, four jobs.

    selflengthen [overrides]            run or resume the configured method (commands/run.py)
    selflengthen eval [overrides]       held-out eval of every finished round (commands/eval.py)
    selflengthen collect [overrides]    the final length-controlled data set (commands/collect.py)
    selflengthen report [overrides]     the table and plots of a run (commands/report.py)

Every job takes the same Hydra overrides; `--help` prints the project's short help (selflengthen/conf/config.yaml,
`hydra.help`). The subcommand is taken off argv before Hydra parses it, so each job sees only overrides.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"run": "selflengthen.commands.run", "eval": "selflengthen.commands.eval",
            "collect": "selflengthen.commands.collect", "report": "selflengthen.commands.report"}


def main() -> None:
    name = "run"
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        name = sys.argv.pop(1)
    importlib.import_module(COMMANDS[name]).main()


if __name__ == "__main__":  # vLLM spawns worker processes: the guard keeps them from rerunning the job
    main()
