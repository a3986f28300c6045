"""`python -m selflengthen.eval [hydra overrides]`: evaluate every finished round of a run on held-out prompts.

Same config and the same run folder as `python -m selflengthen` (pass the same overrides, e.g.
`experiment=smoke`), so it finds the run's rounds and uses its decoding settings. Writes
`iterations/<run>/eval/round_NNN.json` for round 0 (the base model) and each finished round; a rerun
computes only what is missing. The library is `selflengthen.evaluate`.

`cli()` is the edge every evidence command (eval, collect, report) shares: Hydra composes the config,
it becomes typed `Settings`, user errors print one paragraph and exit 2. Each command records its own
Hydra files under `.hydra/<command>/` and logs to `<command>.log`, so the run's own record of its config
(`.hydra/config.yaml`) is never overwritten by a later evidence command.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from selflengthen import ui
from selflengthen.settings import Settings

log = logging.getLogger(__name__)


def cli(name: str, job: Callable[[object, Settings], None]) -> None:
    """Run `job(cfg, settings)` under Hydra with the project's config, as `python -m selflengthen` does."""
    import hydra
    from omegaconf import DictConfig

    from selflengthen.__main__ import CONF, run_dir, user_errors

    for key, value in (("hydra.output_subdir", f".hydra/{name}"), ("hydra.job.name", name)):
        if not any(a.lstrip("+").startswith(key + "=") for a in sys.argv[1:]):
            sys.argv.append(f"{key}={value}")

    @hydra.main(version_base="1.3", config_path=CONF, config_name="config")
    def main(cfg: DictConfig) -> None:
        ui.setup_logging()
        try:
            job(cfg, Settings.from_config(cfg, run_dir()))
        except user_errors() as exc:
            ui.print_error(str(exc))
            logging.getLogger("selflengthen").debug("details", exc_info=True)
            sys.exit(2)

    main()


def warn_on_drift(s: Settings) -> None:
    """Evidence should use the config the run was made with; say so when the overrides differ."""
    from selflengthen import manifest

    old = manifest.load(s.run_dir)
    if old is None:
        log.warning("%s has no manifest: no round of this run has started (check run.name / experiment=)", s.run_dir)
        return
    changed = manifest.diff_keys(old["semantic"], s.semantic)
    if changed:
        log.warning("these settings differ from the ones the run was made with: %s (pass the run's own overrides, "
                    "e.g. the same experiment=, to evaluate it as it was made)", ", ".join(changed[:8]))


def engine_for(s: Settings):
    """The run's engine, created and loaded only if something has to be generated."""
    from selflengthen.recipe import LazyEngine, model_resolver

    return LazyEngine(s.engine, model_resolver(s))


def run_eval(s: Settings) -> dict[int, dict]:
    from selflengthen import evaluate
    from selflengthen.store import RunLock

    warn_on_drift(s)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(s.run_dir):  # the loop (or another eval) must not write the same files meanwhile
        rounds = evaluate.finished_rounds(s.run_dir)
        if len(rounds) == 1:
            log.warning("%s has no finished round: evaluating round 0 (the base model) only", s.run_dir)
        engine = engine_for(s)
        try:
            results = evaluate.evaluate_run(s, engine)
        finally:
            engine.close()
    ui.console.print(evaluate.table(results))
    ui.console.print(f"eval files: {s.run_dir / evaluate.EVAL_DIR}")
    return results


if __name__ == "__main__":  # vLLM spawns worker processes: the guard keeps them from rerunning the job
    cli("eval", lambda cfg, s: run_eval(s))
