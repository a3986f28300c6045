"""Training in several processes (DESIGN §8): `train.launcher=accelerate` runs a trainer under
`accelerate launch` with one of the configs shipped in training/accelerate/ (ddp, zero3, fsdp) or a file of
the user's own, and waits for it. The train stage is unchanged: it calls the trainer, the trainer calls
`launch()` here, which starts the processes, waits, and returns the metrics rank 0 wrote. So resume works as
with one process: Trainer checkpoints in `<role>/checkpoints`, the adapter swapped in whole by rank 0 only.

What stays the same whatever the number of processes: the effective batch. `train.grad_accum` is split over
the processes (2 processes, grad_accum 8 -> 4 each), so `batch_size * grad_accum` rows still make one
optimizer step and a run's results do not depend on how many GPUs trained it (up to data order).

Several machines (`train.num_machines > 1`, inside a Slurm allocation): one `srun` step per node runs
`python -m selflengthen.training.launch --node JOB`, which starts `accelerate launch` there with the node's
rank (SLURM_NODEID) and the first node as the rendezvous host.

Heavy libraries are imported inside functions; a launched process runs `python -m selflengthen.training.launch`.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from selflengthen.support.checks import rule

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent / "accelerate"  # ddp.yaml, zero3.yaml (+ zero3.json), fsdp.yaml
LAUNCHED = "SELFLENGTHEN_TRAIN_LAUNCHED"  # set for the launched processes: they train instead of launching
JOB = "launch.pkl"


@dataclass
class Launch:
    """How training processes are started: the keys every trainer config takes (`train.launcher`, ...)."""

    launcher: str = field(default="none", metadata=rule(choices=("none", "accelerate"),
                                                        fix="use train.launcher=none (this process) or accelerate"))
    accelerate_config: str = "ddp"  # ddp | zero3 | fsdp (shipped) or a path to an accelerate config YAML
    num_processes: int = field(default=1, metadata=rule(ge=1, fix="use the number of GPUs (all machines)"))
    num_machines: int = field(default=1, metadata=rule(ge=1, fix="use train.num_machines=1 (one node)"))
    main_process_port: int = field(default=29500, metadata=rule(ge=1, le=65535, fix="use 29500"))

    def check_launch(self, grad_accum: Optional[int] = None) -> None:
        """Cross-field rules of the launch keys (ValueError: parse_section reports it as a ConfigError)."""
        config_file(self.accelerate_config)
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes={self.num_processes} (all machines) must be a multiple of "
                             f"num_machines={self.num_machines}")
        if grad_accum is not None and self.launcher != "none" and grad_accum % self.num_processes:
            raise ValueError(f"grad_accum={grad_accum} must be a multiple of num_processes={self.num_processes}: "
                             f"each process takes grad_accum / num_processes steps, so the effective batch stays "
                             f"batch_size * grad_accum. Fix: train.grad_accum={self.num_processes * max(1, grad_accum // self.num_processes)}")


def config_file(name: str) -> Path:
    """A shipped accelerate config by name, or the user's YAML file."""
    shipped = CONFIGS / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise ValueError(f"accelerate_config={name!r} is neither a shipped config "
                     f"({', '.join(sorted(p.stem for p in CONFIGS.glob('*.yaml')))}) nor an existing YAML file. "
                     f"Fix: use train.accelerate_config=ddp")


# --- inside a trainer --------------------------------------------------------------------------------------

def launched() -> bool:
    return os.environ.get(LAUNCHED) == "1"


def should_launch(cfg) -> bool:
    """True in the stage's process when the config asks for a launcher; False in the launched processes."""
    return getattr(cfg, "launcher", "none") != "none" and not launched()


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0 if launched() else True


def grad_accum(total: int) -> int:
    """Each process's share of the gradient accumulation: the effective batch does not change."""
    return max(1, total // world_size())


def sum_over_processes(*values: int) -> list[int]:
    """Counts summed over the launched processes (each saw its own batches)."""
    import torch.distributed as dist

    if not (launched() and dist.is_available() and dist.is_initialized()):
        return list(values)
    import torch

    t = torch.tensor(values, dtype=torch.long)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def save(trainer, out_dir: Path, write=None) -> Optional[Path]:
    """Put the trained adapter at `out_dir/adapter` (training/save.py: whole or not at all). One process:
    `write(folder)` (default: the model's save_pretrained). Launched: every process takes part in gathering
    the weights (ZeRO-3 and FSDP shard them), rank 0 alone swaps the adapter in; others get None."""
    from selflengthen.training.save import save_adapter

    if not launched():
        return save_adapter(out_dir, write or (lambda folder: trainer.model.save_pretrained(str(folder))))
    staged = Path(out_dir) / "adapter.gather"
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is not None:
        plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(staged))  # collective: gathers the LoRA weights, rank 0 writes them
    trainer.accelerator.wait_for_everyone()
    if not is_main():
        return None

    def copy(folder: Path) -> None:  # the adapter only: the Trainer also writes its arguments and the tokenizer
        folder.mkdir(parents=True, exist_ok=True)
        for f in staged.iterdir():
            if f.name.startswith("adapter_") or f.name == "README.md":
                shutil.copy2(f, folder / f.name)

    adapter = save_adapter(out_dir, copy)
    shutil.rmtree(staged, ignore_errors=True)
    return adapter


# --- the stage's process: start the launcher and wait --------------------------------------------------------

def launch(fn: str, model_path: str, rows: list, out_dir: Path, init_adapter: Optional[str], cfg) -> dict:
    """Run `fn` ("module:function", a trainer) under `accelerate launch`; return the metrics rank 0 wrote."""
    from selflengthen.runfolder.store import atomic_write_bytes, read_json

    out_dir = Path(out_dir)
    job = out_dir / JOB
    atomic_write_bytes(job, pickle.dumps({"fn": fn, "args": (model_path, rows, str(out_dir), init_adapter, cfg)}))
    (out_dir / "metrics.json").unlink(missing_ok=True)
    if cfg.num_machines > 1:
        cmd = ["srun", f"--nodes={cfg.num_machines}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
               sys.executable, "-m", "selflengthen.training.launch", "--node", str(job)]
    else:
        cmd = accelerate_command(cfg, job, machine_rank=0, main_ip="127.0.0.1")
    log.info("training with %d processes (%s): %s", cfg.num_processes, cfg.accelerate_config, " ".join(cmd))
    code = subprocess.call(cmd, env=_env(), stdin=subprocess.DEVNULL)
    if code != 0 or not (out_dir / "metrics.json").exists():
        raise RuntimeError(
            f"training under accelerate launch ({cfg.accelerate_config}, {cfg.num_processes} processes) stopped "
            f"with exit code {code}; its output is above. Checkpoints in {out_dir / 'checkpoints'} are kept: "
            f"rerun the same command to resume from the last one.")
    job.unlink(missing_ok=True)
    return read_json(out_dir / "metrics.json")


def accelerate_command(cfg, job: Path, machine_rank: int, main_ip: str) -> list[str]:
    path = config_file(cfg.accelerate_config)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path),
           "--num_processes", str(cfg.num_processes), "--num_machines", str(cfg.num_machines),
           "--machine_rank", str(machine_rank), "--main_process_ip", main_ip,
           "--main_process_port", str(cfg.main_process_port)]
    ds_json = path.with_suffix(".json")
    if path.parent == CONFIGS and ds_json.exists():  # a shipped DeepSpeed config: its JSON next to it
        cmd += ["--deepspeed_config_file", str(ds_json)]
    return cmd + ["-m", "selflengthen.training.launch", str(job)]


def _env() -> dict:
    return {**os.environ, LAUNCHED: "1",
            "PYTHONPATH": os.pathsep.join([p for p in sys.path if p] +
                                          [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}


def _node(job: Path) -> int:
    """One machine of a multi-machine run (inside `srun`): start accelerate launch with this node's rank."""
    payload = pickle.loads(Path(job).read_bytes())
    cfg = payload["args"][4]
    hosts = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()
    cmd = accelerate_command(cfg, job, int(os.environ.get("SLURM_NODEID", "0")), hosts[0])
    return subprocess.call(cmd, env=_env())


def _run_job(job: Path) -> None:
    """A launched process: run the trainer with the pickled arguments."""
    from selflengthen.support import ui

    ui.setup_logging()
    payload = pickle.loads(Path(job).read_bytes())
    module, name = payload["fn"].split(":")
    getattr(importlib.import_module(module), name)(*payload["args"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--node"]:
        sys.exit(_node(Path(sys.argv[2])))
    _run_job(Path(sys.argv[1]))
