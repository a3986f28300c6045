"""Data-parallel generation (DESIGN §8): one engine process per rank, each running the items whose id
hashes to it, each writing its own shard of the stage's item log; the shards are merged when every rank is
done, so the stage's artifacts are the ones a single process would have written.

How it fits the stages without changing them. A stage body is written for one process: it opens its item
log, builds a chain per unsettled item and hands them to `stages.common.run_chains`. With
`engine.data_parallel_size=N > 1`, `run_chains` calls `share()` first:

- in the run's own process (the coordinator) it does not generate. It starts N rank processes (the stage's
  body again, each with `folder` = its rank folder), waits for them, appends every shard's records to the
  stage's item log and returns; the body then computes its artifacts from the whole log as usual. A rank
  whose `done.json` is there is not started again, so a rerun after a rank died redoes only that rank, from
  its own shard (nothing it logged is generated twice).
- in a rank process it keeps the chains whose item id hashes to this rank (sha256 of the id mod N: the
  same on every machine and every rerun, unlike Python's hash()), drives them into the rank's shard, and
  `finished()` ends the body there (the coordinator writes the artifacts).

Only generation that goes through `run_chains` inside a `resumable` stage is spread over ranks (initial,
extend, plan, collect's answers); a stage with a global decision between its items (self-instruct's
duplicate check in id order) runs in the coordinator as before. An item is identified by its chain's first
request id (or its first record's `item`), which the stages keep stable across reruns.

On disk, inside the stage folder while it runs (datatrove's rank files and completion markers):
  ranks/job.pkl                          what every rank runs: the stage function, its context, arguments
  ranks/rank-00001-of-00002/<log>.jsonl  the rank's shard of the stage's item log
  ranks/rank-00001-of-00002/done.json    written last, with the shard's checksum: this rank is finished
  ranks/rank-00001-of-00002/output.log   the rank's stdout and stderr
  ranks/rank-00001-of-00002/lock         held while the rank runs (a second process for it is refused)
`ranks/` is removed once its records are in the stage's item log.

Launchers (`engine.rank_launcher`): `local` starts each rank as a subprocess of this one, pinned to its
GPUs with CUDA_VISIBLE_DEVICES (vLLM's offline data-parallel recipe: one process per rank, set up by its
environment); `srun` starts each as a one-task Slurm step inside the current allocation, so ranks spread
over every node of a multi-node job; `ray` runs each as a Ray task on the Ray cluster this node belongs to.

Where this still earns its place: engines without data parallelism of their own (the transformers engine on
several GPUs, the fake engine in tests), and vLLM runs that choose it (`engine.data_parallel_backend=ranks`).
vLLM's own data parallelism (the default for engine=vllm) runs inside one engine handle instead and never
comes here (engines.engine_data_parallel).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

log = logging.getLogger(__name__)

RANKS_DIR = "ranks"
JOB = "job.pkl"
OUTPUT = "output.log"


# --- which rank owns an item --------------------------------------------------------------------------------

def owner(item_id: str, world: int) -> int:
    """The rank that runs `item_id`: sha256 of the id mod `world` (stable across processes and machines)."""
    return int.from_bytes(hashlib.sha256(str(item_id).encode("utf-8")).digest()[:8], "big") % world


def record_item(record: dict) -> str:
    """The item a log record belongs to (stages key their records by `item`, else the id is the item)."""
    return str(record.get("item", record["id"]))


def rank_name(rank: int, world: int) -> str:
    return f"rank-{rank:05d}-of-{world:05d}"


def rank_dir(stage_dir: Path, rank: int, world: int) -> Path:
    return Path(stage_dir) / RANKS_DIR / rank_name(rank, world)


# --- where we are: the stage being run, and whether this process is a rank --------------------------------

@dataclass(frozen=True)
class StageCall:
    """The resumable stage function being run, with what it was called with (set by stages.common.resumable)."""

    fn: Callable
    ctx: Any
    folder: Path
    args: tuple


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int


_STAGE: contextvars.ContextVar[Optional[StageCall]] = contextvars.ContextVar("selflengthen_stage", default=None)
_WORKER: Optional[Rank] = None  # set in a rank process (main() below)


@contextlib.contextmanager
def stage(fn: Callable, ctx: Any, folder: Path, args: tuple = ()) -> Iterator[None]:
    """Mark `fn(ctx, *args)` (a resumable stage, writing `folder`) as the stage now running."""
    token = _STAGE.set(StageCall(fn, ctx, Path(folder), tuple(args)))
    try:
        yield
    finally:
        _STAGE.reset(token)


def world_size(ctx: Any) -> int:
    """Engine ranks of the run: `engine.data_parallel_size`, unless the engine runs its replicas itself
    (vLLM's data parallelism: one engine handle, one stream; then 1)."""
    from selflengthen.engines import engine_data_parallel

    engine = getattr(getattr(ctx, "s", None), "engine", None) or {}
    if engine_data_parallel(engine):
        return 1
    return int(engine.get("data_parallel_size", 1) or 1)


class RankDone(Exception):
    """Raised in a rank process when its chains are all settled: the body stops, the rank is marked done."""

    def __init__(self, shard: Path):
        super().__init__(str(shard))
        self.shard = Path(shard)


class RankFailed(RuntimeError):
    pass


# --- the hooks run_chains calls ----------------------------------------------------------------------------

def share(engine, log_, chains: Iterable, advance: Optional[Callable[[int], None]] = None) -> Optional[Iterable]:
    """The chains this process should drive, or None when the ranks have already run them all (then the
    records are in `log_`). Unchanged outside a stage, with one rank, or when nothing is left to do."""
    if _WORKER is not None:
        return _owned(chains, _WORKER)
    call = _STAGE.get()
    if call is None or world_size(call.ctx) <= 1:
        return chains
    chains = list(chains)  # generator objects, not started: cheap
    if not chains:
        return chains
    run_ranks(call, engine, log_)
    if advance is not None:
        advance(len(chains))
    return None


def finished(log_) -> None:
    """Called when run_chains is done: in a rank process, the stage body ends here."""
    if _WORKER is not None:
        raise RankDone(log_.path)


def _owned(chains: Iterable, me: Rank) -> Iterator:
    """The chains whose item this rank owns. A chain is started to see its first request (or record); an
    owned one is handed on as a chain that yields that first value again."""
    from selflengthen.engines.base import Request

    for chain in chains:
        if not hasattr(chain, "send"):  # an item's attempts (stages.common.Attempts) name their item: nothing to start
            if owner(chain.item, me.world) == me.rank:
                yield chain
            continue
        try:
            first = chain.send(None)
        except StopIteration:
            continue
        item = first.id if isinstance(first, Request) else record_item(first[0])
        if owner(item, me.world) == me.rank:
            yield _replay(first, chain)
        else:
            chain.close()


def _replay(first, chain):
    value = yield first
    while True:
        try:
            out = chain.send(value)
        except StopIteration:
            return
        value = yield out


# --- the coordinator -----------------------------------------------------------------------------------------

def run_ranks(call: StageCall, engine, log_) -> None:
    """Start every unfinished rank of `call`'s stage, wait for all, merge their shards into `log_`."""
    from selflengthen.runfolder.store import atomic_write_bytes, reset_dir, stage_done

    world = world_size(call.ctx)
    rel = Path(log_.path).relative_to(call.folder)
    name = call.folder.name
    close = getattr(engine, "close", None)
    if close is not None:  # the ranks need the accelerators this process may hold (it reloads when needed)
        close()
    pending = []
    for r in range(world):
        if stage_done(rank_dir(call.folder, r, world)):
            log.info("%s: rank %d of %d finished before: kept", name, r, world)
        else:
            pending.append(r)
    if pending:
        _seed_shards(call.folder, rel, log_, pending, world)
        job = call.folder / RANKS_DIR / JOB
        atomic_write_bytes(job, pickle.dumps(_payload(call, engine)))
        _run(call, job, pending, world)
    times = []
    for r in range(world):  # rank order: each item's records stay in the order its rank logged them
        folder = rank_dir(call.folder, r, world)
        done = stage_done(folder)
        if not done:
            raise RankFailed(f"{name}: rank {r} of {world} left no done record in {folder}; rerun the same "
                             f"command to finish it")
        times.append(done.get("summary", {}))
        shard = folder / rel
        if shard.exists():
            _merge(shard, log_)
    _count_time(engine, times)
    reset_dir(call.folder / RANKS_DIR)  # merged: the stage's own log now holds every record
    log.info("%s: %d ranks merged into %s (%d records)", name, world, log_.path.name, len(log_))


def _payload(call: StageCall, engine) -> dict:
    """What a rank needs to run the stage again: no engine, trainer, method or closures (it makes its own;
    a method's stage list may hold lambdas, which do not pickle)."""
    ctx = replace(call.ctx, engine=None, trainer=None, model_path=None, method=None)
    adapters = dict(getattr(engine, "adapters", None) or getattr(ctx, "adapters", {}) or {})
    return {"fn": call.fn, "ctx": ctx, "args": call.args, "adapters": adapters, "stage_dir": str(call.folder)}


def _seed_shards(folder: Path, rel: Path, log_, pending: list[int], world: int) -> None:
    """A new shard starts with what is already logged for its items: the stage's own log (an earlier
    single-process run) and shards of an earlier run with another number of ranks. Nothing is redone."""
    from selflengthen.runfolder.store import ItemLog

    fresh = [r for r in pending if not (rank_dir(folder, r, world) / rel).exists()]
    if not fresh:
        return
    records = list(log_.records)
    for other in sorted((folder / RANKS_DIR).glob(f"rank-*-of-*/{rel}")):
        if other.parent.name.endswith(f"-of-{world:05d}"):
            continue
        records += ItemLog(other).records
    for r in fresh:
        mine = [rec for rec in records if owner(record_item(rec), world) == r]
        shard = ItemLog(rank_dir(folder, r, world) / rel)
        if mine:
            shard.append(mine)  # ItemLog drops ids it already holds: first write wins, as in the stage log


def _merge(shard: Path, log_) -> None:
    from selflengthen.runfolder.store import ItemLog, iter_chunks

    for part in iter_chunks(ItemLog(shard).records, 4096):
        log_.append(part)


def _count_time(engine, times: list[dict]) -> None:
    """The ranks ran side by side: their slowest one's generate and load time is the stage's."""
    for key, attr in (("generate_seconds", "generate_seconds"), ("load_seconds", "load_seconds")):
        if hasattr(engine, attr):
            setattr(engine, attr, getattr(engine, attr) + max((t.get(key, 0.0) for t in times), default=0.0))


def _run(call: StageCall, job: Path, pending: list[int], world: int) -> None:
    """Start the pending ranks, wait for every one; after a failure the others still finish (their work
    is kept), then one error names the ranks that failed and where their output is."""
    cfg = call.ctx.s.engine
    launcher = LAUNCHERS[cfg.get("rank_launcher", "local")]
    gpus = gpus_per_rank(cfg)
    procs: dict[int, Any] = {}  # rank -> subprocess.Popen (or RayRank)
    name = call.folder.name
    try:
        for r in pending:
            folder = rank_dir(call.folder, r, world)
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "selflengthen.engines.ranks", str(job), "--rank", str(r), "--world", str(world)]
            with open(folder / OUTPUT, "ab") as out:
                out.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} start\n".encode())
                out.flush()
                procs[r] = launcher(cmd, _env(r, world, gpus, cfg), r, gpus, out)
            log.info("%s: rank %d of %d started (pid %s, output in %s)", name, r, world, procs[r].pid,
                     folder / OUTPUT)
        failed = []
        for r, proc in procs.items():
            code = proc.wait()
            if code != 0:
                failed.append(r)
                log.warning("%s: rank %d of %d stopped with exit code %d", name, r, world, code)
    finally:
        for proc in procs.values():  # interrupted (Ctrl-C, an error above): no rank outlives the run
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if failed:
        where = ", ".join(str(rank_dir(call.folder, r, world) / OUTPUT) for r in failed)
        raise RankFailed(
            f"{name}: {len(failed)} of {world} generation ranks failed (rank {', '.join(map(str, failed))}); "
            f"their output: {where}. What every rank logged is kept, and finished ranks are not run again: "
            f"rerun the same command to redo only what is missing.")


def gpus_per_rank(cfg: dict) -> int:
    """GPUs one rank uses: `engine.gpus_per_rank`, else the engine's tensor-parallel size, else 1."""
    given = cfg.get("gpus_per_rank")
    return int(given) if given is not None else int(cfg.get("tensor_parallel_size", 1) or 1)


def _env(rank: int, world: int, gpus: int, cfg: dict) -> dict:
    env = {**os.environ,
           "SELFLENGTHEN_RANK": str(rank), "SELFLENGTHEN_WORLD_SIZE": str(world),
           "SELFLENGTHEN_PARENT_PID": str(os.getpid()),
           # the rank imports what this process imports (a test's method module, an editable checkout)
           "PYTHONPATH": os.pathsep.join([p for p in sys.path if p] +
                                         [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    if gpus > 0 and cfg.get("rank_launcher", "local") == "local":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(world * gpus)]
        mine = devices[rank * gpus:(rank + 1) * gpus]
        if len(mine) == gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return env


def _local(cmd: list[str], env: dict, rank: int, gpus: int, out) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def _srun(cmd: list[str], env: dict, rank: int, gpus: int, out) -> subprocess.Popen:
    """One Slurm step per rank inside the current allocation; Slurm picks the node and binds the GPUs."""
    step = ["srun", "--nodes=1", "--ntasks=1", "--exact", "--kill-on-bad-exit=1", f"--job-name=rank{rank}"]
    if gpus > 0:
        step.append(f"--gpus-per-task={gpus}")
    return subprocess.Popen(step + cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def _ray(cmd: list[str], env: dict, rank: int, gpus: int, out) -> "RayRank":
    """One Ray task per rank: Ray places it on a node of the cluster with `gpus` GPUs free (and sets that
    task's CUDA_VISIBLE_DEVICES), where it runs the same rank command. The cluster is the one this process is
    connected to, else the one `RAY_ADDRESS` or `ray start` on this node made, else a local one. As with
    Slurm, the run folder must be on storage every node sees."""
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
        except ConnectionError:  # no cluster running: a local one on this node
            ray.init(log_to_driver=False)
    per_node = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if gpus and not per_node:
        log.info("rank %d: the Ray cluster has no GPUs: the rank runs on a CPU", rank)
        gpus = 0
    elif gpus > per_node:  # Ray would keep the task pending forever
        raise RankFailed(f"rank {rank} needs {gpus} GPUs (engine.gpus_per_rank / tensor_parallel_size) but no node "
                         f"of the Ray cluster has more than {per_node:g}; lower engine.gpus_per_rank or add nodes")
    # the rank's parent is a Ray worker, not this process; Ray assigns the GPUs
    env = {k: v for k, v in env.items() if k not in ("SELFLENGTHEN_PARENT_PID", "CUDA_VISIBLE_DEVICES")}

    def run_rank_command(cmd: list[str], env: dict, output: str) -> int:
        """Inside the Ray task (shipped by value: the worker need not import this package): run the rank
        command with the GPUs Ray gave the task, appending its output to the rank's output.log."""
        import os
        import subprocess

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        env = {**env, **({"CUDA_VISIBLE_DEVICES": visible} if visible is not None else {})}
        with open(output, "ab") as log_file:
            return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                  stderr=subprocess.STDOUT).returncode

    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(run_rank_command)
    return RayRank(task.remote(cmd, env, out.name), rank)


class RayRank:
    """A rank running as a Ray task, with the part of subprocess.Popen's interface `_run` uses."""

    def __init__(self, ref, rank: int):
        self.ref, self.rank = ref, rank
        self.pid = f"Ray task {ref.task_id().hex()[:12]}"
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        import ray

        if self.returncode is None and ray.wait([self.ref], timeout=0)[0]:
            self.wait()
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        import ray

        if self.returncode is None:
            if timeout is not None and not ray.wait([self.ref], timeout=timeout)[0]:
                raise subprocess.TimeoutExpired(f"rank {self.rank}", timeout)
            try:
                self.returncode = int(ray.get(self.ref))
            except (ray.exceptions.RayError, ray.exceptions.TaskCancelledError) as e:
                log.warning("rank %d: its Ray task failed: %s", self.rank, e)
                self.returncode = -1
        return self.returncode

    def terminate(self) -> None:
        import ray

        ray.cancel(self.ref, force=True)  # kills the worker; the rank process dies with it (PR_SET_PDEATHSIG)

    kill = terminate


# name -> fn(cmd, env, rank, gpus, output file) -> Popen (or a Popen-like: RayRank)
LAUNCHERS: dict[str, Callable[..., Any]] = {"local": _local, "srun": _srun, "ray": _ray}


# --- a rank process: python -m selflengthen.engines.ranks JOB --rank R --world N --------------------------------------

def _die_with_parent() -> None:
    """A rank whose coordinator is killed stops too (Linux), so a rerun never meets an orphan still writing."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    parent = os.environ.get("SELFLENGTHEN_PARENT_PID")
    if parent and parent.isdigit() and os.getppid() != int(parent) and os.environ.get("SLURM_STEP_ID") is None:
        sys.exit("the run that started this rank is gone")


def run_rank(job: Path, rank: int, world: int) -> dict:
    """Run one rank of the stage in `job`; returns its done record (an existing one if it finished before)."""
    global _WORKER
    from selflengthen.engines import session
    from selflengthen.runfolder.store import ItemLog, RunLock, RunLocked, guard_run_folder, mark_done, stage_done

    payload = pickle.loads(Path(job).read_bytes())
    ctx, stage_dir = payload["ctx"], Path(payload["stage_dir"])
    folder = rank_dir(stage_dir, rank, world)
    guard_run_folder(ctx.s.run_dir)
    try:
        lock = RunLock(folder)
        lock.acquire()
    except RunLocked:
        raise RankFailed(f"rank {rank} of {world} of {stage_dir.name} is already running in another process "
                         f"(see {folder / 'lock'}); stop it or wait for it") from None
    try:
        done = stage_done(folder)
        if done:
            return done
        engine, model_path = session.for_settings(ctx.s)
        engine.set_adapters(payload["adapters"])
        ctx = replace(ctx, engine=engine, model_path=model_path, method=ctx.s.method)
        _WORKER = Rank(rank, world)
        shard = None
        start = time.time()
        try:
            with stage(payload["fn"], ctx, folder, payload["args"]):
                body = getattr(payload["fn"], "__wrapped__", payload["fn"])
                body(ctx, folder, *payload["args"])
        except RankDone as exc:
            shard = exc.shard
        finally:
            _WORKER = None
            engine.close()
        files = [str(shard.relative_to(folder))] if shard is not None and shard.exists() else []
        records = len(ItemLog(shard)) if files else 0
        return mark_done(folder, files, summary={
            "rank": rank, "world": world, "records": records, "seconds": time.time() - start,
            "generate_seconds": engine.generate_seconds, "load_seconds": engine.load_seconds})
    finally:
        lock.release()


def main(argv: Optional[list[str]] = None) -> None:
    import argparse

    from selflengthen.support import ui

    p = argparse.ArgumentParser(prog="python -m selflengthen.engines.ranks", description="one data-parallel generation rank")
    p.add_argument("job", type=Path)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    a = p.parse_args(argv)
    _die_with_parent()
    ui.setup_logging()
    done = run_rank(a.job, a.rank, a.world)
    log.info("rank %d of %d: %d records", a.rank, a.world, done.get("summary", {}).get("records", 0))


if __name__ == "__main__":
    # run through the imported module, not this `__main__` copy: run_chains reads the rank from selflengthen.engines.ranks
    from selflengthen.engines import ranks as _ranks

    _ranks.main()
