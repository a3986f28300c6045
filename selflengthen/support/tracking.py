"""Experiment trackers (`tracking=tensorboard|wandb|mlflow`; `none` by default): where people who train models
watch a run.

Two streams reach the tracker:
- the loop's own numbers, once per round with the round as the step: every number of the round's
  `summary.json` — each stage's counts (`self_instruct/instructions`, `initial/kept`, `extend/kept`,
  `extend/mean_words`...), `growth` (extended over initial mean words), each rejection reason
  (`rejections/<reason>`), each stage's seconds (`seconds/<stage>`), the eval scores (`eval/...`, round 0 =
  the base model) and a GRPO round's reward means (`train/generator/...`); after the final stages the same
  for them under `final/`, at step iterations + 1;
- the trainers' own per-step metrics (loss, learning rate, grad norm; GRPO's rewards and lengths), through
  transformers' `report_to` integrations, pointed at the same place by environment variables set around each
  training (`training()`): TensorBoard, a folder per training (`train_<role>/<round>`); W&B, the same run;
  MLflow, a nested run per training inside the run's.

The run folder keeps its tracked run in `tracking.json` (per backend: its id and the steps already logged):
a resumed run continues the same tracked run and logs only the steps it has not logged before. A tracker
that is missing or misconfigured stops the command before any work (`check`), in one paragraph.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from selflengthen.support.checks import ConfigError, rule

log = logging.getLogger(__name__)

BACKENDS = ("none", "tensorboard", "wandb", "mlflow")
STATE = "tracking.json"
# set for the run's process (and inherited by trainer subprocesses) while a tracker is open
ENV_REPORT_TO = "SELFLENGTHEN_REPORT_TO"
ENV_TB_ROOT = "SELFLENGTHEN_TB_DIR"
# the package each backend needs, and the extra that installs it
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
             "mlflow": ("mlflow", "mlflow")}


@dataclass(frozen=True)
class Tracking:
    """`tracking:` (selflengthen/conf/tracking/*.yaml) — which tracker, and where."""

    backend: str = field(default="none", metadata=rule(choices=BACKENDS, fix="pick one with tracking=tensorboard "
                                                                              "(or none, wandb, mlflow)"))
    project: str = "selflengthen"  # W&B project / MLflow experiment
    run_name: Optional[str] = None  # the tracked run's name; null = run.name
    dir: Optional[str] = None  # TensorBoard / W&B files; null = <run folder>/tracking
    uri: Optional[str] = None  # MLflow tracking URI; null = a file store in <run folder>/tracking/mlruns
    mode: str = field(default="online", metadata=rule(choices=("online", "offline"),
                                                       fix="use tracking.mode=offline (no account needed) or online"))
    entity: Optional[str] = None  # W&B team or user; null = your default


def folder(s) -> Path:
    """Where the tracker's local files go."""
    return Path(s.tracking.dir).expanduser() if s.tracking.dir else Path(s.run_dir) / "tracking"


def mlflow_uri(s) -> str:
    return s.tracking.uri or (folder(s) / "mlruns").resolve().as_uri()


def _mlflow_env(s) -> dict[str, str]:
    """MLflow 3 keeps its file store only on request (it prefers a database); the default local store asks,
    so `pip install mlflow-skinny` suffices (a sqlite:/// URI needs the full mlflow with SQLAlchemy)."""
    return {"MLFLOW_ALLOW_FILE_STORE": "true"} if mlflow_uri(s).startswith("file:") else {}


def check(s) -> None:
    """Before any work: the tracker's package is installed and its settings can work (one paragraph if not)."""
    t = s.tracking
    if t is None or t.backend == "none":
        return
    module, extra = _PACKAGES[t.backend]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"Config error: tracking={t.backend} needs the `{module}` package, which is not installed. "
                          f"Fix: pip install 'selflengthen[{extra}]' (or pip install {module}), or run without a "
                          f"tracker (tracking=none; every number is still in the run folder's summary.json files).")
    if t.backend == "wandb" and t.mode == "online" and not _wandb_key():
        raise ConfigError("Config error: tracking=wandb with tracking.mode=online needs a W&B account, and no API "
                          "key was found (WANDB_API_KEY or ~/.netrc). Fix: run `wandb login` (or set WANDB_API_KEY), "
                          "or log locally with tracking.mode=offline and upload later with `wandb sync`.")
    if t.backend == "mlflow":
        uri = mlflow_uri(s)
        try:
            from mlflow.tracking import MlflowClient

            with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10", **_mlflow_env(s)):
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 — whatever the store says, it is the user's setting that is wrong
            raise ConfigError(f"Config error: tracking.uri={uri!r} — MLflow cannot use it ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}). Fix: start the tracking server "
                              f"or correct the URI, or set tracking.uri=null for a local file store in the run "
                              f"folder (tracking/mlruns).") from exc


def _wandb_key() -> Optional[str]:
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        import netrc

        auth = netrc.netrc().authenticators("api.wandb.ai")
        return auth[2] if auth else None
    except (OSError, netrc.NetrcParseError):
        return None


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- what is logged -----------------------------------------------------------------------------------------

_SKIP = {"round", "method", "adapters_in", "adapters_out", "key_hash"}


def numbers(node: Any, prefix: str = "") -> dict[str, float]:
    """Every number (not bool) under `node`, keyed by its path joined with '/'."""
    out: dict[str, float] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _SKIP and not prefix:
                continue
            out.update(numbers(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        out[prefix] = float(node)
    return out


def round_metrics(summary: dict) -> dict[str, float]:
    """A round's numbers: its stages' sections, rejections, seconds, eval, and `growth`."""
    metrics = numbers(summary.get("stages") or {})
    metrics.update(numbers({"rejections": summary.get("rejections") or {}, "seconds": summary.get("seconds") or {},
                            "eval": summary.get("eval") or {}}))
    stages = summary.get("stages") or {}
    ini, ext = (stages.get("initial") or {}).get("mean_words"), (stages.get("extend") or {}).get("mean_words")
    if ini and ext:
        metrics["growth"] = ext / ini
    return metrics


# --- the tracked run ----------------------------------------------------------------------------------------

class Tracker:
    """One tracked run for one run folder. `log(step, metrics, key)` logs once per key (round number or
    'final'), ever: the keys already logged are in tracking.json."""

    active = True

    def __init__(self, s):
        self.s, self.cfg = s, s.tracking
        self.path = Path(s.run_dir) / STATE
        self.state = self._load()
        self.mine = self.state.setdefault(self.cfg.backend, {"id": None, "logged": []})
        self.handle: Any = None
        self._env_before: dict[str, Optional[str]] = {}

    def _setenv(self, **values: str) -> None:
        """Environment for the trainers' integrations (inherited by trainer subprocesses); close() restores it."""
        for k, v in values.items():
            self._env_before.setdefault(k, os.environ.get(k))
            os.environ[k] = v

    def _load(self) -> dict:
        try:
            state = json.loads(self.path.read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        from selflengthen.runfolder.store import atomic_write_json

        atomic_write_json(self.path, self.state)

    @property
    def name(self) -> str:
        return self.cfg.run_name or Path(self.s.run_dir).name

    def open(self) -> "Tracker":
        b = self.cfg.backend
        getattr(self, f"_open_{b}")()
        self._save()
        self._setenv(**{ENV_REPORT_TO: b})
        log.info("tracking: %s run %s (%s)", b, self.mine["id"], self.where())
        return self

    def where(self) -> str:
        b = self.cfg.backend
        if b == "mlflow":
            return f"mlflow ui --backend-store-uri {mlflow_uri(self.s)}"
        if b == "tensorboard":
            return f"tensorboard --logdir {folder(self.s) / 'tensorboard'}"
        return f"{self.cfg.mode}; files in {folder(self.s) / 'wandb'}"

    def _open_tensorboard(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        root = folder(self.s) / "tensorboard"
        self.mine["id"] = self.mine["id"] or str(root)
        self.handle = SummaryWriter(log_dir=str(root / "loop"))
        self._setenv(**{ENV_TB_ROOT: str(root)})

    def _open_wandb(self) -> None:
        import wandb

        self.mine["id"] = self.mine["id"] or secrets.token_hex(6)  # W&B run ids: [a-z0-9]
        where = folder(self.s)
        where.mkdir(parents=True, exist_ok=True)
        self.handle = wandb.init(project=self.cfg.project, entity=self.cfg.entity, name=self.name,
                                 id=self.mine["id"], resume="allow", dir=str(where), mode=self.cfg.mode,
                                 config=self.s.semantic)
        wandb.define_metric("round")
        self._setenv(WANDB_PROJECT=self.cfg.project, WANDB_DIR=str(where), WANDB_MODE=self.cfg.mode,
                     WANDB_RUN_GROUP=self.name)

    def _open_mlflow(self) -> None:
        import mlflow

        uri = mlflow_uri(self.s)
        self._setenv(**_mlflow_env(self.s))
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(self.cfg.project)
        run = None
        if self.mine["id"]:
            try:
                run = mlflow.start_run(run_id=self.mine["id"])
            except Exception as exc:  # noqa: BLE001 — a run another store does not know: start a new one
                log.warning("tracking: MLflow run %s is not in %s (%s): starting a new one", self.mine["id"], uri, exc)
                self.mine["logged"] = []
        if run is None:
            run = mlflow.start_run(run_name=self.name)
            mlflow.set_tags({"method": self.s.method_name, "model.path": self.s.model_path})
        self.handle = mlflow
        self.mine["id"] = run.info.run_id
        self._setenv(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME=self.cfg.project, MLFLOW_NESTED_RUN="TRUE")

    def logged(self, key: str) -> bool:
        return key in self.mine["logged"]

    def log(self, step: int, metrics: dict[str, float], key: str) -> None:
        """Log `metrics` at `step` unless `key` was logged before (a resumed run skips its old rounds)."""
        if self.logged(key) or not metrics:
            return
        b = self.cfg.backend
        if b == "tensorboard":
            for k, v in metrics.items():
                self.handle.add_scalar(k, v, global_step=step)
            self.handle.flush()
        elif b == "wandb":
            import wandb

            for k in metrics:  # by name, so the trainers' "*" -> train/global_step does not take them over
                wandb.define_metric(k, step_metric="round")
            self.handle.log({**metrics, "round": step})
        elif b == "mlflow":
            self.handle.log_metrics(metrics, step=step)
        self.mine["logged"].append(key)
        self._save()

    def close(self) -> None:
        for k, v in self._env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._env_before = {}
        if self.handle is None:
            return
        b = self.cfg.backend
        if b == "tensorboard":
            self.handle.close()
        elif b == "wandb":
            self.handle.finish()
        elif b == "mlflow":
            self.handle.end_run()
        self.handle = None


class NoTracker:
    """tracking=none: the numbers stay in the run folder's JSON files."""

    active = False

    def log(self, step: int, metrics: dict[str, float], key: str) -> None:
        pass

    def close(self) -> None:
        pass


def open_tracker(s):
    t = getattr(s, "tracking", None)
    return NoTracker() if t is None or t.backend == "none" else Tracker(s).open()


# --- the hooks the loop calls -------------------------------------------------------------------------------

def log_round(tracker, summary: dict, base_eval: Optional[dict] = None) -> None:
    """After round r is sealed (or found sealed on resume): its numbers at step r; with round 1, the base
    model's eval (round 0's aggregates) at step 0 when there is one."""
    r = int(summary["round"])
    if r == 1 and base_eval:
        tracker.log(0, numbers({"eval": base_eval}), "0")
    tracker.log(r, round_metrics(summary), str(r))


def log_final(tracker, iterations: int, sections: dict, final_eval: Optional[dict] = None) -> None:
    """After the final stages: their numbers (and the final model's eval) under final/, at iterations + 1."""
    if not sections:
        return
    metrics = numbers({"final": {**sections, **({"eval": final_eval} if final_eval else {})}})
    tracker.log(iterations + 1, metrics, f"final@{iterations}")


def report_to() -> list[str] | str:
    """The trainers' `report_to`: the open tracker's integration, or "none"."""
    b = os.environ.get(ENV_REPORT_TO)
    return [b] if b in ("tensorboard", "wandb", "mlflow") else "none"


@contextlib.contextmanager
def training(label: str, role: str) -> Iterator[Optional[str]]:
    """Around one training (`label` = round_001, final, ...): the trainer's run name, and for TensorBoard its
    own event folder. Yields the run name (None when no tracker is open)."""
    if report_to() == "none":
        yield None
        return
    name = f"{label}/{role}"
    values = {"SELFLENGTHEN_TRAIN_RUN_NAME": name}
    if os.environ.get(ENV_TB_ROOT):
        values["TENSORBOARD_LOGGING_DIR"] = str(Path(os.environ[ENV_TB_ROOT]) / f"train_{role}" / label)
    with _env(**values):
        yield name


def run_name() -> Optional[str]:
    """The trainer's run name inside `training()` (TrainingArguments.run_name)."""
    return os.environ.get("SELFLENGTHEN_TRAIN_RUN_NAME")
