"""`selflengthen [hydra overrides]`: run (or resume) the configured method (Self-Lengthen by default).

The Hydra edge is cli.py (config -> checked typed Settings, user errors as one paragraph); the whole job,
top to bottom, is recipe.run.
"""

from __future__ import annotations

from selflengthen import cli


def main() -> None:
    from selflengthen import recipe

    cli.main("run", recipe.run)


if __name__ == "__main__":  # vLLM spawns worker processes: the guard keeps them from rerunning the job
    main()
