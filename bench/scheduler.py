"""How full the stages keep a continuous-batching engine: streamed item chains against the old chunked waves.

A round's two big stages (initial answers with re-draws, then two-stage extension) run through the REAL stage
code (`stages.initial.run`, `stages.extend.run`) against the fake engine's latency model (DESIGN §6): at most
C = 256 sequences in flight, one token per sequence per step, a step costs t0 + t1 * B simulated seconds.
Answers follow the paper's scale: lognormal lengths (median 1,500 tokens, capped at 8,192), about half of
them failing the quality filter (no closing full stop); 2 samples, 20 attempts, 3 extension passes.

Compared:
- streaming — the product: every chain's next request is queued the moment its completion is judged;
- waves N   — the old behaviour, kept here only: the queue is served in chunks of N = checkpoint_every
              requests, each chunk waiting for its slowest sequence before the next one starts.
Reported: engine utilization = tokens emitted / (steps x C), simulated round time, and the orchestration's
own CPU time per completion (everything but the engine: judging with the quality filter on answers of
~2,000 words, chain bookkeeping, the durable item log) on a run whose texts have their real word counts.

    python bench/scheduler.py            # the full table (~2-3 minutes on 2 cores)
    python bench/scheduler.py --quick    # 500 instructions only (seconds)
    python bench/scheduler.py --json     # last line: {"streaming": {...}, "waves": {...}, "cpu_us_per_completion": x,
                                         #             "dp": {"hash": u, "balanced": u}}

Data parallelism over N replicas of the same latency model (8 x 256 slots), two ways:
- hash     — one engine process per rank and stage (selflengthen/engines/ranks.py, run here in-process by the real
             ranks code): each rank runs the items whose id hashes to it on its own replica, the stage ends
             when the slowest rank does, and the initial -> extension handover is off;
- balanced — one engine handle over N replicas (vLLM's own data parallelism): one stream, each new request
             sent to the replica with the fewest sequences in flight, speculation and the handover over all
             N x C slots.
Utilization there = tokens emitted / what N replicas at a full batch emit in the round's simulated time.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SELFLENGTHEN_QUIET", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selflengthen.engines.base import stream_in_batches  # noqa: E402
from selflengthen.engines.fake import FakeEngine  # noqa: E402

SLOTS, STEP_S, TOKEN_S = 256, 0.025, 0.0001  # C, t0, t1: ~50 ms a step at a full batch (a 7B model on one GPU)
MEDIAN_TOKENS, SIGMA, MAX_TOKENS = 1500, 0.7, 8192
FAIL = 0.5  # share of answers that fail the quality filter
STAGE1_GROWTH, STAGE2_SHARE = 1.4, 0.8  # median output / input of extension stage 1 and stage 2 (candidate ~1.3x)
WORDS_PER_TOKEN = 0.75


def _corpus(n_words: int, seed: int = 0) -> tuple[str, list[int]]:
    """A long text of made-up words in ~60-word paragraphs (no 10-gram repeats), and each word's offset."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ren", "sto", "vu", "pa", "zel", "tor", "ni", "qua", "bre", "dun", "fi", "gal", "hes"]
    vocab = ["".join(rng.choice(syll) for _ in range(rng.randint(2, 4))) for _ in range(3000)]
    parts, offsets, pos = [], [], 0
    for i in range(n_words):
        word = rng.choice(vocab) + (".\n\n" if i % 60 == 59 else " ")
        offsets.append(pos)
        parts.append(word)
        pos += len(word)
    offsets.append(pos)
    return "".join(parts), offsets


class PaperScaleEngine(FakeEngine):
    """The latency-model fake with the paper's answer lengths. A request's answer is a pure function of its
    seed: a lognormal token count, a slice of a fixed corpus with `words_per_token` words per token (fewer
    words keep the big runs quick; the utilization depends on the token counts only), and whether it ends
    with a full stop (FAIL of them do not)."""

    corpus, offsets = _corpus(400_000)

    def __init__(self, words_per_token: float = WORDS_PER_TOKEN, **kw):
        super().__init__("bench", max_slots=SLOTS, step_seconds=STEP_S, token_seconds=TOKEN_S, **kw)
        self.words_per_token = words_per_token
        self._tokens = 0
        self.cpu = 0.0  # process CPU seconds spent inside this engine's streams

    def _one(self, r) -> str:
        rng = random.Random(r.params.seed)
        if r.params.max_new_tokens <= 8:  # a yes/no judge (not used by these stages)
            self._tokens = 2
            return "Yes."
        source = len(r.messages[-1][1]) / 7 / self.words_per_token  # tokens of the text given (~7 chars a word)
        if source < 200:  # an answer to an instruction
            tokens = rng.lognormvariate(math.log(MEDIAN_TOKENS), SIGMA)
        elif not r.assistant_prefix:  # extension stage 1: the first half, rewritten longer
            tokens = source * rng.lognormvariate(math.log(STAGE1_GROWTH), 0.3)
        else:  # stage 2: the continuation after the kept two thirds of stage 1
            tokens = source * rng.lognormvariate(math.log(STAGE2_SHARE), 0.3)
        self._tokens = min(MAX_TOKENS, r.params.max_new_tokens, max(8, int(tokens)))
        words = max(5, int(self._tokens * self.words_per_token))
        start = rng.randrange(len(self.offsets) - words - 1)
        text = self.corpus[self.offsets[start]:self.offsets[start + words]].rstrip(" .\n")
        return text if rng.random() < FAIL else text + "."

    def tokens(self, request, text: str) -> int:
        return self._tokens

    def stream(self, queue):
        it = super().stream(queue)
        while True:
            start = time.process_time()
            try:
                c = next(it)
            except StopIteration:
                self.cpu += time.process_time() - start
                return
            self.cpu += time.process_time() - start
            yield c


class Waves:
    """The old scheduling, for comparison only: chunks of `n` queued requests, each waiting for its slowest."""

    def __init__(self, inner: PaperScaleEngine, n: int):
        self.inner, self.n = inner, n

    def stream(self, queue):
        return stream_in_batches(self.inner, queue, self.n)


class Replicas(PaperScaleEngine):
    """N replicas of the latency model behind one engine handle and one stream, as vLLM's data parallelism
    serves them: each request the stream takes goes to the replica with the fewest sequences in flight (vLLM's
    DP coordinator balances on its engines' queue lengths). Every replica steps on its own clock (a step
    costs t0 + t1 x its own batch); the event loop advances the replica whose next sequence finishes first,
    and a replica given a request first catches up to that moment. `seconds` is the round's simulated time."""

    def __init__(self, replicas: int, words_per_token: float = WORDS_PER_TOKEN):
        super().__init__(words_per_token)
        self.replicas = replicas
        self.seconds = 0.0
        self.sim.slots = SLOTS * replicas  # speculation sees every replica's slots

    def _simulated(self, queue):
        n, cost = self.replicas, lambda b: STEP_S + TOKEN_S * b
        steps = [0] * n
        flight: list[list] = [[] for _ in range(n)]  # per replica: heap of (step it finishes at, order, completion)
        now, order = self.seconds, 0
        clock = [now] * n  # each replica's time at its last step boundary

        def catch_up(i: int) -> None:  # replica i's steps between its last boundary and `now`
            if not flight[i]:
                clock[i] = max(clock[i], now)
                return
            k = min(int((now - clock[i]) / cost(len(flight[i]))), flight[i][0][0] - steps[i] - 1)
            if k > 0:
                self.sim.tokens += k * len(flight[i])
                clock[i] += k * cost(len(flight[i]))
                steps[i] += k

        while True:
            if queue.cancelled:
                for i in range(n):
                    kept = [f for f in flight[i] if f[2].id not in queue.cancelled]
                    if len(kept) < len(flight[i]):
                        catch_up(i)
                        flight[i] = kept
                        heapq.heapify(kept)
                queue.cancelled.clear()
            while queue:
                i = min(range(n), key=lambda j: len(flight[j]))
                if len(flight[i]) >= SLOTS:
                    break
                catch_up(i)
                c = self._finish(queue.take(1)[0])
                heapq.heappush(flight[i], (steps[i] + c.new_tokens, order, c))
                order += 1
            busy = [i for i in range(n) if flight[i]]
            if not busy:
                return
            i = min(busy, key=lambda j: clock[j] + (flight[j][0][0] - steps[j]) * cost(len(flight[j])))
            end, batch = flight[i][0][0], len(flight[i])
            now = max(now, clock[i] + (end - steps[i]) * cost(batch))
            self.sim.tokens += (end - steps[i]) * batch
            self.sim.steps += end - steps[i]
            clock[i], steps[i] = now, end
            self.seconds = now  # also when the stream is left open for the next stage, or closed early
            self.sim.peak = max(self.sim.peak, sum(len(f) for f in flight))
            while flight[i] and flight[i][0][0] == end:
                yield heapq.heappop(flight[i])[2]


def full_batch_utilization(tokens: int, seconds: float, replicas: int) -> float:
    """Tokens emitted / what `replicas` replicas decoding full batches emit in `seconds` of simulated time."""
    return tokens / (replicas * SLOTS * seconds / (STEP_S + TOKEN_S * SLOTS)) if seconds else 0.0


def settings(run_dir: Path, checkpoint_every: int, speculate: bool = True, extra: tuple = ()):
    from hydra import compose, initialize_config_dir

    from selflengthen.settings import Settings

    overrides = [*extra, "experiment=fake", "generate.samples=2", "generate.max_attempts=20", f"generate.max_new_tokens={MAX_TOKENS}",
                 "extend.samples=2", "extend.passes=3", "extend.max_attempts=20", f"extend.max_new_tokens={MAX_TOKENS}",
                 f"run.checkpoint_every={checkpoint_every}", "run.checkpoint_seconds=30", f"run.speculate={speculate}"]
    with initialize_config_dir(config_dir=str(REPO / "selflengthen" / "conf"), version_base="1.3"):
        return Settings.from_config(compose("config", overrides=overrides), run_dir)


def one_round(n_instructions: int, waves: int | None, words_per_token: float, speculate: bool = True) -> dict:
    """Initial answers + extension for `n_instructions`, streamed (waves=None) or in chunked waves."""
    from selflengthen.methods.base import load_method
    from selflengthen.recipe import run_stages
    from selflengthen.stages import extend, initial
    from selflengthen.stages.common import SPECULATION, RoundContext
    from selflengthen.runfolder.store import atomic_write_jsonl

    engine = PaperScaleEngine(words_per_token)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    try:
        s = settings(tmp, waves or 64, speculate)
        SPECULATION.clear()
        ctx = RoundContext(s, 1, Waves(engine, waves) if waves else engine, {"generator": None, "extender": None})
        atomic_write_jsonl(ctx.stage_dir("self_instruct") / "instructions.jsonl",
                           [{"id": f"i{k:05d}", "prompt": f"Write a long article about subject {k}."}
                            for k in range(n_instructions)])
        cpu0, wall0 = time.process_time(), time.time()
        method = load_method("selflengthen")
        sections = run_stages(ctx, [method.stage(initial.NAME), method.stage(extend.NAME)])
        first, second = sections[initial.NAME], sections[extend.NAME]
        cpu, wall = time.process_time() - cpu0, time.time() - wall0
        digest = _digest(ctx)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = engine.stats.requests
    wasted = SPECULATION["wasted_tokens"]
    return {"utilization": engine.sim.utilization, "useful": (engine.sim.tokens - wasted) / (engine.sim.steps * SLOTS),
            "ahead": SPECULATION["started"], "ahead_used": SPECULATION["used"], "digest": digest,
            "handover": SPECULATION["handover_started"], "handover_used": SPECULATION["handover_used"],
            "sim_hours": engine.sim.seconds / 3600, "completions": n,
            "tokens": engine.sim.tokens, "wall_s": wall, "kept_initial": first["kept"], "kept_extended": second["kept"],
            "cpu_us_per_completion": (cpu - engine.cpu) / n * 1e6}


def dp_round(n_instructions: int, replicas: int, how: str, words_per_token: float) -> dict:
    """Initial answers + extension for `n_instructions` on `replicas` replicas: `hash` runs the real ranks code
    (selflengthen/engines/ranks.py; each rank in this process, one after the other, on a fresh replica of its own: the
    stage's time is its slowest rank's), `balanced` one stream over a `Replicas` engine."""
    from unittest import mock

    from selflengthen.engines import session
    from selflengthen.engines import ranks
    from selflengthen.methods.base import load_method
    from selflengthen.recipe import run_stages
    from selflengthen.stages import extend, initial
    from selflengthen.stages.common import SPECULATION, RoundContext
    from selflengthen.runfolder.store import atomic_write_jsonl

    tmp = Path(tempfile.mkdtemp(prefix="bench-scheduler-dp-"))
    stages: list[list[PaperScaleEngine]] = []  # hash: the replicas each sharded stage started

    def rank_engine(_s):
        e = PaperScaleEngine(words_per_token)
        e.generate_seconds = e.load_seconds = 0.0
        stages[-1].append(e)
        return e, lambda: "bench"

    def in_process(call, job, pending, world):
        stages.append([])
        for r in pending:
            ranks.run_rank(job, r, world)

    try:
        extra = (f"engine.data_parallel_size={replicas}",) if how == "hash" else ()
        s = settings(tmp, 64, True, extra)
        SPECULATION.clear()
        engine = PaperScaleEngine(words_per_token) if how == "hash" else Replicas(replicas, words_per_token)
        ctx = RoundContext(s, 1, engine, {"generator": None, "extender": None})
        atomic_write_jsonl(ctx.stage_dir("self_instruct") / "instructions.jsonl",
                           [{"id": f"i{k:05d}", "prompt": f"Write a long article about subject {k}."}
                            for k in range(n_instructions)])
        wall0 = time.time()
        method = load_method("selflengthen")
        with mock.patch.object(ranks, "_run", in_process), mock.patch.object(session, "for_settings", rank_engine):
            run_stages(ctx, [method.stage(initial.NAME), method.stage(extend.NAME)])
        wall = time.time() - wall0
        digest = _digest(ctx)
    finally:
        ranks._WORKER = None
        from selflengthen.runfolder import store

        for folder in [f for f in store._RUN_FOLDERS if f.startswith(str(tmp))]:  # ranks run here in-process
            store.unguard_run_folder(Path(folder))  # guarded their folders: leave the process as it found it
        shutil.rmtree(tmp, ignore_errors=True)
    if how == "hash":
        seconds = sum(max(e.sim.seconds for e in stage) for stage in stages)
        tokens = sum(e.sim.tokens for stage in stages for e in stage)
        starts = sum(len(stage) for stage in stages)
        completions = sum(e.stats.requests for stage in stages for e in stage)
    else:
        seconds, tokens, starts, completions = engine.seconds, engine.sim.tokens, 1, engine.stats.requests
    return {"utilization": full_batch_utilization(tokens, seconds, replicas), "sim_hours": seconds / 3600,
            "tokens": tokens, "starts": starts, "completions": completions, "digest": digest, "wall_s": wall}


def dp_table(sizes: list[int], replicas: int = 8) -> dict:
    """hash vs balanced for each size; prints the table, returns {size: {how: result}}."""
    out = {size: {how: dp_round(size, replicas, how, WORDS_PER_TOKEN if size <= 500 else 0.1)
                  for how in ("hash", "balanced")} for size in sizes}
    print(f"\ndata parallel: {replicas} replicas x {SLOTS} slots; utilization = tokens / what {replicas} full batches "
          f"emit in the round's simulated time")
    print("| data parallel | instructions | completions | utilization | simulated round | engine starts per round | wall s | logs |")
    print("|---------------|--------------|-------------|-------------|-----------------|-------------------------|--------|------|")
    for size, runs in out.items():
        for how, r in runs.items():
            starts = f"{r['starts']} (one per rank and stage)" if how == "hash" else "1 per run (woken after training)"
            print(f"| {how:13} | {size:12,} | {r['completions']:11,} | {r['utilization']:11.3f} | "
                  f"{r['sim_hours']:13.2f} h | {starts:>23} | {r['wall_s']:6.1f} | {r['digest'][:8]} |")
    return out


def _digest(ctx) -> str:
    """The stage logs as sets of records: equal with and without speculation (same records, same choices)."""
    import hashlib

    h = hashlib.sha256()
    for name, log in (("initial", "attempts.jsonl"), ("extend", "passes.jsonl"), ("extend", "extended.jsonl")):
        lines = (ctx.stage_dir(name) / log).read_text().splitlines()
        h.update("\n".join(sorted(lines)).encode())
    return h.hexdigest()[:16]


def filter_us(words: int = 2000, reps: int = 200) -> float:
    """The quality filter alone on one ~2,000-word answer (part of the per-completion CPU above)."""
    from selflengthen.writing import filters

    o = PaperScaleEngine.offsets
    text = PaperScaleEngine.corpus[o[1000]:o[1000 + words]].rstrip() + "."
    start = time.process_time()
    for _ in range(reps):
        filters.check(text, filters.EN)
    return (time.process_time() - start) / reps * 1e6


def machine() -> str:
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
        flags = " avx512_bf16" if "avx512_bf16" in info else ""
    except OSError:
        model = platform.processor() or "?"
    return f"{os.cpu_count()} CPU ({model}{flags}), Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--quick", action="store_true", help="500 instructions only")
    ap.add_argument("--no-plain", action="store_true", help="skip the streaming runs without speculation")
    ap.add_argument("--replicas", type=int, default=8, help="data-parallel replicas compared (default 8)")
    args = ap.parse_args()

    print(f"machine: {machine()}")
    print(f"engine model: C={SLOTS} slots, step = {STEP_S} s + {TOKEN_S} s x batch; answers lognormal "
          f"(median {MEDIAN_TOKENS} tokens, cap {MAX_TOKENS}), {FAIL:.0%} fail the filter; k=2, 3 passes, 20 attempts")
    runs: list[tuple[str, int, dict]] = []
    sizes = [500] if args.quick else [5000, 500]
    for size in sizes:
        # the 500-instruction streamed run has texts of their real word counts: it also gives the CPU figure
        wpt = WORDS_PER_TOKEN if size == 500 else 0.1
        runs.append(("streaming", size, one_round(size, None, wpt)))
        if not args.no_plain:
            runs.append(("no spec.", size, one_round(size, None, wpt, speculate=False)))
        if size == sizes[0]:
            for n in (64, 256, 1024):
                runs.append((f"waves {n}", size, one_round(size, n, wpt)))
    print("\n| scheduling | instructions | completions | utilization | useful | ahead (used) | simulated round | wall s | logs |")
    print("|------------|--------------|-------------|-------------|--------|--------------|-----------------|--------|------|")
    for name, size, r in runs:
        ahead = f"{r['ahead']:,} ({r['ahead_used']:,})" if name == "streaming" else "-"
        print(f"| {name:10} | {size:12,} | {r['completions']:11,} | {r['utilization']:11.3f} | {r['useful']:6.3f} | "
              f"{ahead:>12} | {r['sim_hours']:13.2f} h | {r['wall_s']:6.1f} | {r['digest'][:8]} |")
    cpu = next(r for name, size, r in runs if name == "streaming" and size == 500)
    f_us = filter_us()
    print(f"\norchestration CPU per completion (streaming, 500 instructions, texts of real length): "
          f"{cpu['cpu_us_per_completion']:.0f} us (of which the quality filter on a 2,000-word answer: {f_us:.0f} us)")
    dp = dp_table(sizes, args.replicas)
    if args.json:
        out = {"streaming": {str(size): round(r["utilization"], 4) for name, size, r in runs if name == "streaming"},
               "streaming_useful": {str(size): round(r["useful"], 4) for name, size, r in runs if name == "streaming"},
               "waves": {name.split()[1]: round(r["utilization"], 4) for name, size, r in runs if name.startswith("waves")},
               "cpu_us_per_completion": round(cpu["cpu_us_per_completion"], 1),
               "dp": {how: round(r["utilization"], 4) for how, r in dp[500].items()}}
        print(json.dumps(out))


if __name__ == "__main__":
    main()
