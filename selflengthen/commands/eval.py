"""`python -m selflengthen eval [hydra overrides]`: evaluate every finished round of a run on held-out prompts.

Same config and the same run folder as `python -m selflengthen` (pass the same overrides, e.g.
`experiment=smoke`), so it finds the run's rounds and uses its decoding settings. Writes the eval files
under `iterations/<run>/eval/` for round 0 (the base model), each finished round and the final model; a
rerun computes only what is missing. The library is `selflengthen.evidence.heldout`; the Hydra edge is cli.py.
"""

from __future__ import annotations

import logging

from selflengthen import cli
from selflengthen.support import ui
from selflengthen.settings import Settings

log = logging.getLogger(__name__)


def run_eval(s: Settings) -> dict[int, dict]:
    from selflengthen.engines import session
    from selflengthen.evidence import heldout
    from selflengthen.runfolder.store import RunLock

    cli.warn_on_drift(s)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(s.run_dir):  # the loop (or another eval) must not write the same files meanwhile
        cli.record_config(s, "eval")
        rounds = heldout.finished_rounds(s.run_dir)
        if len(rounds) == 1:
            log.warning("%s has no finished round: evaluating round 0 (the base model) only", s.run_dir)
        engine, _ = session.for_settings(s)
        try:
            results = heldout.evaluate_run(s, engine)
        finally:
            engine.close()
    path = heldout.prompt_path(s)
    ui.console.print(f"prompts: {path} (read as {heldout.prompt_format(heldout.load_prompts(path, s.eval.limit))} format)")
    ui.console.print(heldout.table(results))
    ui.console.print(f"eval files: {s.run_dir / heldout.EVAL_DIR}")
    return results


def main() -> None:
    cli.main("eval", run_eval)


if __name__ == "__main__":  # vLLM spawns worker processes: the guard keeps them from rerunning the job
    main()
