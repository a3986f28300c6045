"""The Hydra edge every entry point shares (run, eval, collect, report).

`main(name, job)` registers the resolvers, composes the project's config under Hydra, builds the typed
`Settings` (every check of user input happens there, before any lock, manifest or model), runs
`job(settings)`, and turns user errors into one paragraph and exit code 2 — no traceback.

Hydra's own writing of `.hydra/` is turned off: the entry point writes the config it ran with itself
(`record_config`), after the lock and the drift check passed, so a refused command never overwrites the
run's record. Each evidence command records under `.hydra/<command>/` and logs to `<command>.log`.
No entry point imports another; they all import this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from omegaconf import OmegaConf

from selflengthen import ui

CONF = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger(__name__)


def job_dir(override_dirname: str) -> str:
    """A multirun job's folder name: its overrides (k=v,...), hashed when too long for a file name."""
    name = override_dirname.replace("/", "_").replace("\\", "_") or "default"
    if name in (".", ".."):
        name = f"job-{name.count('.')}"
    return name if len(name) <= 120 else f"{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def bad_run_name(name: str) -> str | None:
    """Why `name` cannot be a run folder name (a single plain folder name), or None when it can."""
    from selflengthen.store import StoreError, check_run_name

    try:
        check_run_name(name)
    except StoreError as exc:
        return str(exc)
    return None


def bad_run_root(root: str) -> str | None:
    from selflengthen.store import StoreError, check_run_root

    try:
        check_run_root(root)
    except StoreError as exc:
        return str(exc)
    return None


def usable_dir(root: str, name: str) -> str:
    """The run folder `root/name`, checked and write-probed before Hydra writes its own files there, so an
    unusable `run.root` or `run.name` is one clear message rather than a traceback from inside Hydra."""
    from selflengthen.store import write_probe

    why = bad_run_root(str(root)) or bad_run_name(str(name))
    if why:
        ui.print_error(f"{why} Nothing was started.")
        sys.exit(2)
    path = Path(str(root)).expanduser() / str(name)
    _BEFORE.setdefault(os.path.abspath(path), _snapshot(path))
    try:
        write_probe(path)
    except OSError as exc:
        ui.print_error(f"Cannot use the run folder {path}: {getattr(exc, 'strerror', None) or exc}. Check that "
                       f"run.root={root!r} is a folder you can write to (or choose another with run.root=... / "
                       f"run.name=...). Nothing was started, and nothing already there was touched.")
        sys.exit(2)
    return str(path)


# run folder (absolute) -> (the highest folder the command line made for it, or None; the entries it held before)
_BEFORE: dict[str, tuple[Optional[Path], frozenset[str]]] = {}


def _snapshot(path: Path) -> tuple[Optional[Path], frozenset[str]]:
    """What is there before Hydra makes the run folder and its job log: so a refusal can take them back."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        return None, frozenset(p.name for p in path.iterdir())
    top = path
    while top.parent != top and not top.parent.exists():
        top = top.parent
    return top, frozenset()


def leave_nothing(output_dir: Path) -> None:
    """A refused command takes back what starting it made: the job log Hydra opened and the run folder (and
    the folders above it it made) — only while they hold nothing else, so a refusal after work keeps it all."""
    output_dir = Path(os.path.abspath(output_dir))
    made, before = _BEFORE.get(str(output_dir), (None, None))
    if before is None or not output_dir.is_dir():
        return
    new = {p.name for p in output_dir.iterdir()} - before
    if any(not n.endswith(".log") for n in new):
        return
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's job log: close it before removing its file
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == output_dir \
                and Path(handler.baseFilename).name in new:
            root.removeHandler(handler)
            handler.close()
    for n in new:
        (output_dir / n).unlink(missing_ok=True)
    if made is not None:
        folder = output_dir
        while True:
            try:
                folder.rmdir()
            except OSError:
                break
            if folder == made:
                break
            folder = folder.parent


def selflengthen_home() -> str:
    """The folder holding conf/, README.md and docs/ (for `--help`)."""
    return str(Path(CONF).parent)


def register_resolvers() -> None:
    for name, fn in (("job_dir", job_dir), ("usable_dir", usable_dir), ("selflengthen_home", selflengthen_home)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()  # tests compose the config without going through main()


def user_errors() -> tuple[type, ...]:
    from selflengthen.config import ConfigError
    from selflengthen.models import ModelNotFound
    from selflengthen.store import StoreError

    return ConfigError, StoreError, ModelNotFound


def _force(key: str, value: str) -> None:
    if not any(a.lstrip("+").startswith(key + "=") for a in sys.argv[1:]):
        sys.argv.append(f"{key}={value}")


def main(name: str, job: Callable) -> None:
    """Run `job(settings)` under Hydra with the project's config. `name` is the command: "run" keeps Hydra's
    job name and log file; evidence commands log to `<name>.log`."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from selflengthen.settings import Settings

    _force("hydra.output_subdir", "null")
    if name != "run":
        _force("hydra.job.name", name)

    @hydra.main(version_base="1.3", config_path=CONF, config_name="config")
    def _main(cfg: DictConfig) -> None:
        ui.setup_logging()
        try:
            settings = Settings.from_config(cfg, Path(HydraConfig.get().runtime.output_dir))
            check_inputs(settings, name)
            job(settings)
        except user_errors() as exc:
            ui.print_error(str(exc))
            logging.getLogger("selflengthen").debug("details", exc_info=True)
            leave_nothing(Path(HydraConfig.get().runtime.output_dir))
            sys.exit(2)

    _main()


def check_inputs(s, command: str = "run") -> None:
    """Every file a user named, before any lock, manifest or generation: model.path (check_model) and the
    eval prompt file (when this command evaluates, or when one is set: a bad path must not wait for round
    N's eval). data.seed_file was read by Settings already."""
    check_model(s)
    if command == "run":
        from selflengthen import tracking

        tracking.check(s)
    if command == "eval" or s.eval.every_round or s.eval.prompt_file:
        from selflengthen import evaluate

        evaluate.check_eval_settings(s.eval)
        evaluate.load_prompts(evaluate.prompt_path(s), s.eval.limit)


def check_model(s) -> None:
    """model.path must be loadable before any lock, manifest or generation (the fake engine loads nothing)."""
    if s.engine.get("name") == "fake":
        return
    from selflengthen.models import check_model_path

    check_model_path(s.model_path, s.model_cache)


def record_config(s, command: str = "run") -> None:
    """Write the config this command ran with to `.hydra/` (run) or `.hydra/<command>/`, once the lock and
    the drift check passed."""
    from selflengthen.store import atomic_write_bytes

    folder = Path(s.run_dir) / ".hydra" / ("" if command == "run" else command)
    for fname, text in (s.hydra_record or {}).items():
        atomic_write_bytes(folder / fname, text.encode())


def warn_on_drift(s) -> None:
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
