"""`selflengthen collect [hydra overrides]`: the final length-controlled data set of a finished run, exported.

Same overrides as the run, so it finds its folder and model. The library is evidence/dataset.py (what is
collected and how); this file holds the lock, the config record and the engine's lifetime.
"""

from __future__ import annotations

from selflengthen import cli
from selflengthen.evidence import dataset
from selflengthen.settings import Settings
from selflengthen.support import ui


def run_collect(s: Settings, cc) -> dict:
    from selflengthen.engines import session
    from selflengthen.runfolder.store import RunLock

    cli.warn_on_drift(s)
    with RunLock(s.run_dir):
        cli.record_config(s, "collect")
        engine, _ = session.for_settings(s)
        try:
            info = dataset.collect(s, cc, engine)
        finally:
            engine.close()
    ui.console.print(f"collected {info['rows']} rows ({info['from_rounds']} from rounds, {info['from_collect']} "
                     f"new; constraints {info['kinds']}) -> {s.run_dir / dataset.EXPORT_DIR}")
    return info


def main() -> None:
    cli.main("collect", lambda s: run_collect(s, s.collect))


if __name__ == "__main__":  # vLLM spawns worker processes: the guard keeps them from rerunning the job
    main()
