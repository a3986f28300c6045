"""`python -m selflengthen [hydra overrides]`: run (or resume) Self-Lengthen.

Hydra lives here and nowhere else: the composed config becomes typed `Settings` (all checks happen
before any model loads), then the recipe runs. Errors the user can fix print one paragraph, no traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from selflengthen import ui
from selflengthen.settings import ConfigError, Settings
from selflengthen.store import StoreError

CONF = str(Path(__file__).resolve().parent.parent / "conf")


def job_dir(override_dirname: str) -> str:
    """A multirun job's folder name: its overrides (k=v,...), hashed when too long for a file name."""
    import hashlib

    name = override_dirname.replace("/", "_") or "default"
    return name if len(name) <= 120 else f"{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def usable_dir(root: str, name: str) -> str:
    """The run folder `root/name`, made and write-checked before Hydra writes its own files there, so an
    unusable `run.root` is one clear message rather than a traceback from inside Hydra."""
    from selflengthen.store import write_probe

    path = Path(root).expanduser() / name
    try:
        write_probe(path)
    except OSError as exc:
        ui.print_error(f"Cannot use the run folder {path}: {exc.strerror or exc}. Check that run.root={root!r} is a "
                       f"folder you can write to (or choose another with run.root=... / run.name=...). Nothing was "
                       f"started, and nothing already there was touched.")
        sys.exit(2)
    return str(path)


for _name, _fn in (("job_dir", job_dir), ("usable_dir", usable_dir)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
USER_ERRORS = (ConfigError, StoreError)


def run_dir() -> Path:
    """Hydra's output folder for this job: iterations/<run.name> (multirun: .../<override dirname>)."""
    return Path(HydraConfig.get().runtime.output_dir)


def user_errors() -> tuple[type, ...]:
    from selflengthen.models import ModelNotFound

    return USER_ERRORS + (ModelNotFound,)


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> None:
    ui.setup_logging()
    try:
        settings = Settings.from_config(cfg, run_dir())
        from selflengthen import recipe

        recipe.run(settings)
    except user_errors() as exc:
        ui.print_error(str(exc))
        logging.getLogger("selflengthen").debug("details", exc_info=True)
        sys.exit(2)


if __name__ == "__main__":  # vLLM spawns worker processes: the guard keeps them from rerunning the job
    main()
