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

from selflengthen.support import ui

# the Hydra config ships inside the package, so an installed wheel (pip install selflengthen) finds it too
CONF = str(Path(__file__).resolve().parent / "conf")
log = logging.getLogger(__name__)


def job_dir(override_dirname: str) -> str:
    """A multirun job's folder name: its overrides (k=v,...), hashed when too long for a file name."""
    name = override_dirname.replace("/", "_").replace("\\", "_") or "default"
    if name in (".", ".."):
        name = f"job-{name.count('.')}"
    return name if len(name) <= 120 else f"{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def bad_run_name(name: str) -> str | None:
    """Why `name` cannot be a run folder name (a single plain folder name), or None when it can."""
    from selflengthen.runfolder.store import StoreError, check_run_name

    try:
        check_run_name(name)
    except StoreError as exc:
        return str(exc)
    return None


def bad_run_root(root: str) -> str | None:
    from selflengthen.runfolder.store import StoreError, check_run_root

    try:
        check_run_root(root)
    except StoreError as exc:
        return str(exc)
    return None


def usable_dir(root: str, name: str) -> str:
    """The run folder `root/name`, checked and write-probed before Hydra writes its own files there, so an
    unusable `run.root` or `run.name` is one clear message rather than a traceback from inside Hydra."""
    from selflengthen.runfolder.store import write_probe

    why = bad_run_root(str(root)) or bad_run_name(str(name))
    if why:
        ui.print_error(f"{why} Nothing was started.")
        sys.exit(2)
    path = Path(str(root)).expanduser() / str(name)
    _BEFORE.setdefault(os.path.abspath(path), _snapshot(path))
    linked = linked_logs(path)
    if linked:
        ui.print_error(f"{linked[0]} is a link. The run appends its log there, and it never writes through a link "
                       f"(that would change a file outside the run folder). Nothing was started. Fix: remove the "
                       f"link (`rm {linked[0]}` removes only the link) and run the same command again.")
        sys.exit(2)
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


def selflengthen_conf() -> str:
    """The folder holding the config (`config.yaml` and one folder per group), for `--help`."""
    return CONF


def register_resolvers() -> None:
    for name, fn in (("job_dir", job_dir), ("usable_dir", usable_dir), ("selflengthen_conf", selflengthen_conf)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()  # tests compose the config without going through main()


def user_errors() -> tuple[type, ...]:
    from selflengthen.support.checks import ConfigError
    from selflengthen.engines.models import ModelNotFound
    from selflengthen.runfolder.store import StoreError

    return ConfigError, StoreError, ModelNotFound


def _force(key: str, value: str) -> None:
    """Add `key=value` to the command line's overrides unless the user gave the key. It goes right after the
    user's last override: Hydra's parser takes the overrides as one run of words, so one appended after an
    option (`experiment=smoke --cfg job`) would be refused as an unrecognized argument."""
    argv = sys.argv
    if any(a.lstrip("+").startswith(key + "=") for a in argv[1:]):
        return
    from hydra._internal.utils import get_args_parser

    try:
        given = get_args_parser().parse_args(argv[1:]).overrides or []
    except SystemExit:  # Hydra reports the command line's own error when it parses it
        given = []
    at = len(argv)
    if given:
        at = max(i for i, a in enumerate(argv) if i > 0 and a == given[-1]) + 1
    argv.insert(at, f"{key}={value}")


INTERRUPTED = ("Interrupted. Everything finished so far is saved (item logs are durable, a stage's record is "
               "written last); run the same command again to resume where it stopped.")


def main(name: str, job: Callable) -> None:
    """Run `job(settings)` under Hydra with the project's config. `name` is the command: "run" keeps Hydra's
    job name and log file; evidence commands log to `<name>.log`.

    Before Hydra starts anything, `preflight` checks every job the command line makes (one, or each job of a
    `-m` sweep): a bad value in any job refuses the whole sweep before a job runs. A job refused later (the
    run folder is locked, drift) is reported and the sweep goes on with the next job; the command then ends
    with the list of refused jobs and exit code 2. Ctrl-C ends with one line saying how to resume."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from selflengthen.settings import Settings

    refused: list[str] = []
    try:
        preflight(name, sys.argv[1:])
        _force("hydra.output_subdir", "null")
        if name != "run":
            _force("hydra.job.name", name)

        @hydra.main(version_base="1.3", config_path=CONF, config_name="config")
        def _main(cfg: DictConfig) -> None:
            ui.setup_logging()
            hc = HydraConfig.get()
            sweep = str(hc.mode) == "RunMode.MULTIRUN"
            try:
                out = Path(hc.runtime.output_dir)
                check_output_dir(cfg, out, sweep)
                settings = Settings.from_config(cfg, out)
                check_inputs(settings, name)
                job(settings)
            except user_errors() + (OSError,) as exc:
                message = str(exc) if not isinstance(exc, OSError) else os_error(exc)
                ui.print_error(message)
                logging.getLogger("selflengthen").debug("details", exc_info=True)
                leave_nothing(Path(hc.runtime.output_dir))
                if not sweep:
                    sys.exit(2)
                refused.append(f"job {hc.job.num} ({hc.job.override_dirname or 'no overrides'}): {message}")

        _main()
    except KeyboardInterrupt:
        ui.print_error(INTERRUPTED)
        sys.exit(130)
    if refused:
        ui.print_error(f"{len(refused)} job(s) of the sweep were refused (each message is above); the others ran. "
                       f"Fix the cause and run the same sweep again: finished jobs are skipped. Refused: "
                       + " | ".join(r.split(":")[0] for r in refused))
        sys.exit(2)


def os_error(exc: OSError) -> str:
    """One paragraph for an OSError that reached the command's edge: the file, what the disk said, what to do."""
    from selflengthen.runfolder.store import _disk_error

    if exc.filename:
        return str(_disk_error(Path(exc.filename), exc, "use"))
    return (f"The command stopped on a disk or system error: {exc.strerror or exc}. Nothing finished was lost; fix "
            f"the cause and run the same command again.")


def linked_logs(folder: Path) -> list[Path]:
    """Log files in `folder` that are links (Hydra appends the command's log there, following links)."""
    try:
        return sorted(p for p in Path(folder).glob("*.log") if p.is_symlink())
    except OSError:
        return []


# --- before anything runs: every job of the command line, checked ------------------------------------------

READS_A_RUN = ("eval", "report", "collect")  # commands on a run the loop made: it must exist
_HYDRA_DIRS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.runtime.output_dir")


class _Refused(Exception):
    pass


def preflight(command: str, argv: list[str]) -> None:
    """Compose the config of every job the command line makes (one, or every job of a `-m` sweep) and check
    it as the job would (Settings, check_inputs), plus what Hydra itself would trip over later: a scalar given
    for a whole config section (`run=5`), hydra.run.dir / hydra.sweep.dir set by hand (the run folder is
    run.root/run.name, so its checks hold), two jobs that would share one folder, and for eval, report and
    collect a run that does not exist. Any problem prints one paragraph per job and exits with code 2
    before anything is written. Options other than `-m` (Hydra's --help, --cfg, ...) are left to Hydra."""
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # Hydra reports its own usage errors
    if any(getattr(args, k, None) for k in ("help", "hydra_help", "cfg", "info", "shell_completion",
                                              "config_name", "experimental_rerun", "config_path")):
        return
    logging.disable(logging.WARNING)  # the job itself logs its warnings (e.g. the eval budget) once, later
    try:
        problems = _check_jobs(command, list(args.overrides or []), bool(args.multirun), args.config_dir)
    finally:
        logging.disable(logging.NOTSET)
    if problems:
        if len(problems) == 1 and not args.multirun:
            ui.print_error(problems[0][1])
        else:
            ui.print_error(f"The sweep was refused before any job ran: {len(problems)} job(s) cannot run. Fix them "
                           f"(or leave them out of the sweep) and run it again.")
            for job, why in problems:
                ui.print_error(f"job {job}: {why}")
        sys.exit(2)


def _check_jobs(command: str, overrides: list[str], multirun: bool,
                config_dir: Optional[str] = None) -> list[tuple[str, str]]:
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # noqa: BLE001 — Hydra's parse errors are several classes
        return [("", f"Config error: the command line could not be read ({_first_line(exc)}). Fix: write each "
                     f"setting as key=value (quote values holding spaces or commas).")]
    for o in parsed:
        key = o.get_key_element().lstrip("+~")
        if key in _HYDRA_DIRS:
            return [("", f"Config error: {key}={o.get_value_element_as_str()!r} — the run folder is chosen with "
                         f"run.root and run.name (run.root/run.name; a sweep's jobs get folders inside it), so "
                         f"that every command finds the run and the folder checks hold. Nothing was started. "
                         f"Fix: drop {key}=... and use run.root=<folder> run.name=<name>.")]
    # --config-dir adds the user's folder of presets to Hydra's search path: the check composes with it too
    extra = [f"hydra.searchpath=[file://{Path(config_dir).expanduser().resolve()}]"] \
        if config_dir and not any(o.lstrip("+").startswith("hydra.searchpath=") for o in overrides) else []
    if multirun:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        try:
            # a preset may hold the sweep itself (hydra.sweeper.params); the command line wins for a key in both
            preset = _preset_sweep(overrides, parsed, extra)
            if preset:
                parsed = OverridesParser.create().parse_overrides([*preset, *overrides])
            jobs = BasicSweeper.split_arguments(parsed, None)[0]
        except Exception as exc:  # noqa: BLE001
            return [("", f"Config error: the sweep could not be expanded ({_first_line(exc)}).")]
    else:
        jobs = [overrides]
    problems: list[tuple[str, str]] = []
    folders: dict[str, str] = {}
    with initialize_config_dir(config_dir=CONF, version_base="1.3", job_name="selflengthen"):
        base = None
        for i, job in enumerate(jobs):
            label = f"{i} ({','.join(job) or 'no overrides'})" if multirun else ""
            try:
                if base is None:
                    base = compose("config", overrides=extra)
                folder, dirname = _check_job(command, compose, base, [*job, *extra], multirun)
                if folder in folders and folders[folder][1] != dirname:  # same folder for other semantic overrides
                    raise _Refused(f"it would share the folder {folder} with job {folders[folder][0]}: their overrides "
                                   f"differ only in characters a folder name cannot hold ('/' becomes '_'). Two jobs "
                                   f"in one folder would mix their rounds. Fix: give the files distinct names, or run "
                                   f"them as separate runs with run.name=<name>.")
                folders.setdefault(folder, (label or "0", dirname))
            except user_errors() as exc:
                problems.append((label, str(exc)))
            except _Refused as exc:
                problems.append((label, str(exc)))
            except Exception as exc:  # noqa: BLE001 — Hydra/OmegaConf composition errors: several classes
                problems.append((label, f"Config error: the config could not be composed: {_first_line(exc)}. "
                                        f"Nothing was started. Fix: check the spelling of each key and value "
                                        f"(see selflengthen/conf/config.yaml); a section such as run or eval takes its settings "
                                        f"as run.name=..., not run=<value>."))
    return problems


def _preset_sweep(overrides: list[str], parsed: list, extra: list[str]) -> list[str]:
    """The sweep the config itself holds (`hydra.sweeper.params`, e.g. in a preset), as Hydra's basic sweeper
    reads it — `key=value` each — less the keys the command line sets. A config that does not compose gives
    none here: the job check reports why."""
    from hydra import compose, initialize_config_dir

    fixed = [o for o, p in zip(overrides, parsed) if not p.is_sweep_override()]
    try:
        with initialize_config_dir(config_dir=CONF, version_base="1.3", job_name="selflengthen"):
            cfg = compose("config", overrides=[*fixed, *extra], return_hydra_config=True)
        params = cfg.hydra.sweeper.get("params") or {}
    except Exception:  # noqa: BLE001 — composition errors are reported per job
        return []
    given = {p.get_key_element().lstrip("+~") for p in parsed}
    return [f"{k}={v}" for k, v in params.items() if k not in given]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_job(command: str, compose, base, job: list[str], multirun: bool) -> tuple[str, str]:
    """One job's config checked as the job would check it; returns its run folder and its override_dirname."""
    from omegaconf import DictConfig, open_dict

    from selflengthen.settings import Settings

    cfg = compose("config", overrides=job, return_hydra_config=True)
    for key in base:
        if isinstance(base.get(key), DictConfig) and not isinstance(cfg.get(key), DictConfig):
            raise _Refused(f"Config error: {key}={cfg.get(key)!r} — {key} is a section of settings, not one value. "
                           f"Nothing was started. Fix: set a key inside it, e.g. {key}.<key>=<value> (see the {key}: "
                           f"section of selflengthen/conf/config.yaml).")
    dirname = str(cfg.hydra.job.override_dirname)
    with open_dict(cfg):
        del cfg["hydra"]
    root, name = cfg.run.root, cfg.run.name
    why = bad_run_root(str(root)) or bad_run_name(str(name))
    if why:
        raise _Refused(f"{why} Nothing was started.")
    folder = Path(str(root)).expanduser() / str(name)
    if multirun:
        folder = folder / job_dir(dirname)
    linked = linked_logs(folder)
    if linked:
        raise _Refused(f"{linked[0]} is a link. The command appends its log there, and it never writes through a "
                       f"link. Nothing was started. Fix: remove the link (`rm {linked[0]}` removes only the link).")
    settings = Settings.from_config(cfg, folder)
    check_inputs(settings, command)
    if command in READS_A_RUN:
        check_run_exists(folder, command)
    return str(folder), dirname


def run_folders(root: Path) -> list[str]:
    """The names of the runs in `root`: folders holding a manifest or a round."""
    try:
        return sorted(p.name for p in Path(root).expanduser().iterdir()
                      if p.is_dir() and (os.path.lexists(p / "manifest.json") or os.path.lexists(p / "round_001")))
    except OSError:
        return []


def check_run_exists(folder: Path, command: str) -> None:
    """eval, report and collect work on a run the loop made: a folder without one is a mistyped name (or
    missing overrides), said with the runs that do exist, before anything is written."""
    folder = Path(folder)
    if os.path.lexists(folder / "manifest.json") or os.path.lexists(folder / "round_001"):
        return
    root = folder.parent
    runs = run_folders(root)
    there = (f"The runs in {root} are: {', '.join(runs[:20])}{' and more' if len(runs) > 20 else ''}." if runs
             else f"There is no run in {root} yet.")
    raise _Refused(f"There is no run at {folder}: {command} works on a run the loop made, and that folder holds "
                   f"none (no manifest.json, no round). {there} Nothing was written. Fix: pass the run's own "
                   f"overrides (e.g. experiment=smoke, or run.name=<one of the runs above>), or make the run "
                   f"first with python -m selflengthen.")


def check_output_dir(cfg, out: Path, sweep: bool) -> None:
    """The folder Hydra gave the job must be run.root/run.name (a sweep job: a folder inside it), so the run
    folder's checks hold: a hydra.run.dir set in a config file is refused like one on the command line."""
    from selflengthen.runfolder.store import StoreError

    expected = Path(str(cfg.run.root)).expanduser() / str(cfg.run.name)
    real, want = os.path.realpath(out), os.path.realpath(expected)
    if real == want or (sweep and os.path.dirname(real) == want):
        return
    raise StoreError(f"The job's folder {out} is not run.root/run.name ({expected}): hydra.run.dir or "
                     f"hydra.sweep.dir was set by hand. The run folder is chosen with run.root and run.name so that "
                     f"every command finds the run and its checks hold. Fix: remove the hydra.run.dir / "
                     f"hydra.sweep.dir setting and use run.root=<folder> run.name=<name>.")


def check_inputs(s, command: str = "run") -> None:
    """Every file a user named, before any lock, manifest or generation: model.path (check_model) and the
    eval prompt file (when this command evaluates, or when one is set: a bad path must not wait for round
    N's eval). data.seed_file was read by Settings already."""
    check_model(s)
    if command == "run":
        from selflengthen.support import tracking

        tracking.check(s)
    if command == "eval" or s.eval.every_round or s.eval.prompt_file:
        from selflengthen.evidence import heldout

        heldout.check_eval_settings(s.eval)
        path = heldout.prompt_path(s)
        warning = heldout.check_budget(heldout.load_prompts(path, s.eval.limit), s.eval.max_new_tokens, path)
        if warning:
            log.warning("%s", warning)
    check_work(s)


MAX_ITEMS = 1_000_000  # chains one stage may hold in memory at once (about 1 GB); more is refused at start-up


def check_work(s) -> None:
    """A round's stages build their items in memory before the first one is written: the product of a
    section's `num_new` and every section's `samples` is bounded, so `generate.samples=100000000` is one
    message at start-up instead of minutes of allocation with nothing on disk."""
    from selflengthen.support.checks import ConfigError

    sections = getattr(s, "sections", {}) or {}
    sizes = [(f"{k}.num_new", getattr(v, "num_new")) for k, v in sections.items()
             if isinstance(getattr(v, "num_new", None), int)]
    sizes += [(f"{k}.samples", getattr(v, "samples")) for k, v in sections.items()
              if isinstance(getattr(v, "samples", None), int)]
    total, named = 1, []
    for key, n in sizes:
        if n > 1:
            total *= n
            named.append(f"{key}={n}")
        if total > MAX_ITEMS:
            raise ConfigError(f"Config error: {' x '.join(named)} — a round would hold over {MAX_ITEMS:,} items in "
                              f"memory before writing the first, which no machine this runs on has room for. Fix: "
                              f"lower these (the paper uses generate.samples=2, extend.samples=2; grow the data "
                              f"with more rounds or run.name=<another run> instead).")


def check_model(s) -> None:
    """model.path must be loadable before any lock, manifest or generation (the fake engine loads nothing)."""
    if s.engine.get("name") == "fake":
        return
    from selflengthen.engines.models import check_model_path

    check_model_path(s.model_path, s.model_cache)


def record_config(s, command: str = "run") -> None:
    """Write the config this command ran with to `.hydra/` (run) or `.hydra/<command>/`, once the lock and
    the drift check passed."""
    from selflengthen.runfolder.store import atomic_write_bytes

    folder = Path(s.run_dir) / ".hydra" / ("" if command == "run" else command)
    for fname, text in (s.hydra_record or {}).items():
        atomic_write_bytes(folder / fname, text.encode())


def warn_on_drift(s) -> None:
    """Evidence should use the config the run was made with; say so when the overrides differ."""
    from selflengthen.runfolder import manifest
    from selflengthen.runfolder.store import StoreError

    try:
        old = manifest.load(s.run_dir)
    except StoreError as exc:  # this command does not write the manifest: say so and go on
        log.warning("%s (this command goes on without the drift check)", exc)
        return
    if old is None:
        log.warning("%s has no manifest: no round of this run has started (check run.name / experiment=)", s.run_dir)
        return
    changed = manifest.diff_keys(old["semantic"], s.semantic)
    if changed:
        log.warning("these settings differ from the ones the run was made with: %s (pass the run's own overrides, "
                    "e.g. the same experiment=, to evaluate it as it was made)", ", ".join(changed[:8]))
