"""What every stage of a round shares: its context (folder, seeds, settings, engine, trainer), the decoding
settings, the stream scheduler (item chains fed by one engine stream, records made durable by a `Journal`),
re-draws on top of it, and the resumable wrapper."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable, Iterator, Optional, Sequence

from selflengthen import layout
from selflengthen.config import rule
from selflengthen.engines.base import Completion, Request, RequestQueue, SamplingParams, stream_in_batches
from selflengthen.store import ItemLog, mark_done, stage_done

if TYPE_CHECKING:  # pragma: no cover
    from selflengthen.filters import FilterConfig
    from selflengthen.methods.base import Method
    from selflengthen.settings import Settings


@dataclass(frozen=True)
class Decoding:
    """`decoding:` — sampling for every generation (paper values); temperature 0 = greedy."""

    temperature: float = field(default=0.7, metadata=rule(ge=0.0, fix="use 0 for greedy, 0.7 as in the paper"))
    top_p: float = field(default=0.8, metadata=rule(gt=0.0, le=1.0, fix="use 0.8 as in the paper"))
    top_k: int = field(default=20, metadata=rule(ge=0, fix="use 20 as in the paper (0 = no top-k cut)"))
    repetition_penalty: float = field(default=1.1, metadata=rule(gt=0.0, fix="use 1.1 as in the paper (1.0 = off)"))


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts: the same run, round, item and attempt give the same draw."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


@dataclass
class RoundContext:
    """What a stage may use: the settings, the round, the engine and the trainer. Stages hand data to each
    other through files in `stage_dir(name)` only."""

    s: "Settings"
    round_no: int
    engine: Any  # an Engine, loaded lazily on first use (engine_session.LazyEngine)
    adapters: dict  # adapter name -> folder used for generation in this round (None = base)
    method: Optional["Method"] = None
    trainer: Optional[Callable] = None
    train_cfg: Any = None
    model_path: Optional[Callable[[], str]] = None
    folder: Optional[Path] = None  # default: the round's folder; the final stages use final/
    adapters_out: dict = field(default_factory=dict)  # set by the train stage

    def __post_init__(self) -> None:
        if not self.adapters_out:
            self.adapters_out = dict(self.adapters)

    @property
    def round_dir(self) -> Path:
        return self.folder or layout.round_dir(self.s.run_dir, self.round_no)

    def stage_dir(self, name: str) -> Path:
        return self.round_dir / name

    def cfg(self, key: str) -> Any:
        """The typed config section `key` (e.g. "extend"), parsed and checked at start-up."""
        return self.s.section(key)

    def seed(self, *parts: object) -> int:
        return derive_seed(self.s.seed, self.round_no, *parts)

    def params(self, max_new_tokens: int, seed: int, stop: Sequence[str] = (), min_new_tokens: int = 0) -> SamplingParams:
        d = self.s.decoding
        return SamplingParams(temperature=d.temperature, top_p=d.top_p, top_k=d.top_k,
                              repetition_penalty=d.repetition_penalty, max_new_tokens=max_new_tokens,
                              stop=tuple(stop), seed=seed, min_new_tokens=min(min_new_tokens, max_new_tokens))

    def messages(self, system: Optional[str], user: str) -> list[tuple[str, str]]:
        return ([("system", system)] if system else []) + [("user", user)]

    @property
    def durability(self) -> "Durability":
        return Durability(self.s.run.checkpoint_every, self.s.run.checkpoint_seconds, self.s.run.speculate)


# --- the stream scheduler (DESIGN §6) ---------------------------------------------------------------------

@dataclass(frozen=True)
class Durability:
    """How often a stage's buffered records reach the disk: every `every` records or `seconds` seconds,
    whichever comes first (`run.checkpoint_every`, `run.checkpoint_seconds`). A crash loses at most that.
    Never a batch size: the engine is fed the same way whatever these are."""

    every: int = 64
    seconds: float = 30.0
    # not durability, but how the same stream is run: idle engine slots start the next attempts of items
    # still under way (`run.speculate`; see `Attempts`). Changes no record, only when they are made.
    speculate: bool = False


class Journal:
    """Records on their way to an item log: buffered, appended (fsynced) in groups of at most `every`, and
    by a timer once the oldest buffered record is `seconds` old, so a slow stream is durable too; the rest
    at `close()`. The records of one `add` are never split over two appends (a pass and its attempt's
    verdict land together). After a failed append nothing more is written: later records of a chain must
    never reach the log without its earlier ones."""

    def __init__(self, log: ItemLog, durability: Durability):
        self.log, self.every, self.seconds = log, max(1, durability.every), durability.seconds
        self._buf: list[dict] = []
        self._since = 0.0  # time.monotonic() of the oldest buffered record
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._timer = threading.Thread(target=self._tick, name="journal-flush", daemon=True)
        self._timer.start()

    def add(self, records: list[dict]) -> None:
        with self._lock:
            self._check()
            if self._buf and len(self._buf) + len(records) > self.every:
                self._flush()
            if not self._buf:
                self._since = time.monotonic()
            self._buf.extend(records)
            if len(self._buf) >= self.every:
                self._flush()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # after an error elsewhere, what is buffered was judged and is valid: keep it, unless an append already
        # failed (then a chain's later record could land without its earlier one)
        self.close(flush=self._error is None)

    def close(self, flush: bool = True) -> None:
        """Stop the timer; with `flush`, append what is buffered (raising an earlier append's error instead)."""
        self._stop.set()
        self._timer.join()
        if flush:
            with self._lock:
                self._check()
                self._flush()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _flush(self) -> None:
        if not self._buf:
            return
        batch, self._buf = self._buf, []
        try:
            self.log.append(batch)
        except BaseException as exc:
            self._error = exc
            raise

    def _tick(self) -> None:
        interval = min(1.0, max(0.005, self.seconds / 4))
        while not self._stop.wait(interval):
            with self._lock:
                if self._error is None and self._buf and time.monotonic() - self._since >= self.seconds:
                    try:
                        self._flush()
                    except BaseException:  # kept in self._error; the stage raises it at its next add/close
                        return


class ChainQueue(RequestQueue):
    """A RequestQueue that serves the next step of a chain already under way before any chain's first
    request: a freed slot goes to the chain that just finished a step, so a chain never waits behind fresh
    ones and the stage's long chains (many re-draws or passes) are not pushed to its end."""

    def __init__(self):
        super().__init__()
        self._next: deque[Request] = deque()

    def add_next(self, request: Request) -> None:
        self._next.append(request)

    def take(self, n: Optional[int] = None) -> list[Request]:
        n = len(self) if n is None else min(n, len(self))
        out = [self._next.popleft() for _ in range(min(n, len(self._next)))]
        return out + super().take(n - len(out))

    def __len__(self) -> int:
        return len(self._next) + super().__len__()

    def cancel(self, request_id: str) -> bool:
        for r in self._next:
            if r.id == request_id:
                self._next.remove(r)
                return True
        return super().cancel(request_id)

    def __bool__(self) -> bool:
        return bool(self._next) or super().__bool__()


class Scheduler:
    """One engine stream shared by many requests: `submit(request, then)` queues a request (at any time,
    also from inside a `then`), and `run()` feeds the engine until nothing is queued or in flight, calling
    each request's `then(completion)` as soon as it finishes. A request id is in flight at most once.
    `next_step=True` marks the continuation of a chain under way: it is served before first requests."""

    def __init__(self, engine, spare: Optional[Callable[[int], None]] = None):
        self.engine = engine
        self.queue = ChainQueue()
        self._then: dict[str, Callable[[Completion], None]] = {}
        # `spare(n)`: may submit up to n speculative requests; called when nothing is queued and the engine
        # (one that says how many sequences it decodes at once: `capacity`) has idle slots. The capacity is
        # asked once a completion is back, when the engine is loaded (never to load it).
        self.capacity: Optional[int] = None
        self._spare = spare
        self._dropped: set[str] = set()  # cancelled while in flight

    def submit(self, request: Request, then: Callable[[Completion], None], next_step: bool = False) -> None:
        if request.id in self._then:
            raise ValueError(f"request {request.id} is already in flight")
        self._then[request.id] = then
        if next_step:
            self.queue.add_next(request)
        else:
            self.queue.add(request)

    def cancel(self, request_id: str) -> None:
        """Withdraw a request: a queued one never starts; one in flight is left to the engine (dropped if it
        checks `queue.cancelled`, else finished and handed to its `then`), and not waited for."""
        if self.queue.cancel(request_id):
            del self._then[request_id]
        else:
            self._dropped.add(request_id)

    def run(self) -> None:
        while self.queue:
            stream = self._stream()
            try:
                for c in stream:
                    self._dropped.discard(c.id)
                    self._then.pop(c.id)(c)
                    if self._spare is not None and self.capacity is None:
                        self.capacity = engine_capacity(self.engine) or 0
                    if self.capacity and not self.queue:
                        idle = self.capacity - len(self._then)  # nothing queued: every pending request is in flight
                        if idle > 0:
                            self._spare(idle)
                    if not self.queue and self._then and self._dropped.issuperset(self._then):
                        break  # only cancelled work is left in flight: the stage does not wait for it
            finally:
                if hasattr(stream, "close"):
                    stream.close()  # an engine stream closed early stops what it still decodes
            for rid in self._dropped:
                self._then.pop(rid, None)
            self._dropped.clear()
        if self._then:
            raise RuntimeError(f"the engine's stream ended with {len(self._then)} request(s) unanswered "
                               f"(e.g. {next(iter(self._then))})")


    def _stream(self) -> Iterator[Completion]:
        if hasattr(self.engine, "stream"):
            return self.engine.stream(self.queue)
        # a generate-only engine (a test double): static batches of whatever is queued
        return stream_in_batches(self.engine, self.queue, max(1, len(self.queue)))


# A chain is one item's state machine, written as a generator: it yields a Request and receives its
# Completion, or yields a list of records (received: None) to be logged; it returns when the item is settled.
Chain = Generator[Any, Optional[Completion], None]


def engine_capacity(engine) -> Optional[int]:
    """How many sequences the engine decodes at once, if it batches continuously and says so; else None."""
    cap = getattr(engine, "capacity", None)
    return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None


@dataclass
class Attempts:
    """An item settled by independent attempts: attempt k runs only when attempt k - 1 failed, and depends on
    nothing but (item, k) — its seeds are derived from them, it starts from the item's source. `make(k)` is
    attempt k's chain; it returns True (StopIteration's value) when the attempt settles the item.

    Given to `run_chains` instead of a chain, the attempts run one after the other as a chain would, and
    with `Durability.speculate` the engine's idle slots also run later attempts ahead of their turn: their
    records are held back and reach the log only when every earlier attempt has failed, in the order a
    plain chain would have written them; once an attempt succeeds the ones ahead of it are dropped. So the
    log is the same record for record, whatever the speculation did; only the stage's end comes sooner."""

    item: str
    first: int  # the attempt to start from (where the log left the item)
    end: int  # no attempt k >= end (max_attempts)
    make: Callable[[int], Chain]


# What speculation did in this process (for benches; never part of an artifact): attempts started ahead of
# their turn, those of them whose records were used, and the tokens of the ones dropped.
SPECULATION: Counter = Counter()


@dataclass
class _Attempt:
    k: int
    chain: Chain
    held: list = field(default_factory=list)  # record lists waiting for the earlier attempts' verdicts
    result: Optional[bool] = None  # True / False once the chain returned
    dead: bool = False
    pending: Optional[str] = None  # the id of its request waiting for the engine
    ahead: bool = False  # started by speculation
    tokens: int = 0  # new tokens of its completions so far


class _Item:
    """The attempts of one `Attempts` item under way: `live` is the attempt whose records go to the log."""

    def __init__(self, spec: Attempts):
        self.spec, self.live, self.runs = spec, spec.first, {}  # k -> _Attempt
        self.settled = False

    @property
    def next_k(self) -> int:
        return max(self.runs, default=self.live - 1) + 1


def run_chains(engine, log: ItemLog, chains: Iterable[Chain | Attempts], durability: Durability,
               advance: Optional[Callable[[int], None]] = None) -> None:
    """Drive every chain to its end through one engine stream (DESIGN §6). A chain's next request is queued
    the moment its previous completion has been judged, so the engine stays full and no chain waits for
    another; records go to `log` through a `Journal` (durable every N records or T seconds, and at the
    end). `advance(1)` is called as each chain ends. An `Attempts` item runs its attempts in turn, and with
    `durability.speculate` idle engine slots run its later attempts ahead (see `Attempts`). With
    `engine.data_parallel_size` > 1 the chains run on engine ranks instead, each writing its own shard,
    merged into `log` here (selflengthen/ranks.py)."""
    from selflengthen import ranks

    chains = ranks.share(engine, log, chains, advance)
    if chains is None:  # every rank ran its share: their records are in `log`
        return
    open_items: dict[int, _Item] = {}  # items with attempts left to run ahead, not settled yet, in start order

    def spare(n: int) -> None:
        """Start up to n attempts ahead of their turn: one more per item under way, round after round."""
        while n > 0:
            started = 0
            for it in list(open_items.values()):
                if n <= 0:
                    break
                if it.next_k < it.spec.end:
                    k = it.next_k
                    it.runs[k] = _Attempt(k, it.spec.make(k), ahead=True)
                    SPECULATION["started"] += 1
                    drive(it, it.runs[k], None)
                    n -= 1
                    started += 1
            if not started:
                return

    sched = Scheduler(engine, spare if durability.speculate else None)
    with Journal(log, durability) as journal:
        def drive(it: _Item, run: _Attempt, value: Optional[Completion], fresh: bool = False) -> None:
            """Advance one attempt; its records go to the log if it is the live one, else they are held. `fresh`:
            the item's very first request, which waits behind the steps of chains under way."""
            if run.dead:
                SPECULATION["wasted_tokens"] += value.new_tokens if value is not None else 0
                return  # a completion for an attempt made useless by an earlier success: dropped
            run.pending = None
            run.tokens += value.new_tokens if value is not None else 0
            under_way = not fresh and (value is not None or run.k == it.live)
            try:
                while True:
                    out = run.chain.send(value)
                    if isinstance(out, Request):
                        if run.k > it.live:
                            out = dataclasses.replace(out, id=f"{out.id}~{run.k}")  # one id in flight at a time
                        run.pending = out.id
                        sched.submit(out, lambda c: drive(it, run, c), next_step=under_way)
                        return
                    if run.k == it.live:
                        journal.add(out)
                    else:
                        run.held.append(out)
                    value = None
            except StopIteration as stop:
                run.result = bool(stop.value)
                settle(it)

        def settle(it: _Item) -> None:
            """Move `live` past finished attempts: a success settles the item, a failure hands over to the next
            attempt (its held records are logged now), starting it if no slot ran it ahead."""
            while not it.settled:
                run = it.runs.get(it.live)
                if run is None or run.result is None:
                    return
                if run.result or it.live + 1 >= it.spec.end:
                    it.settled = True
                    for later in it.runs.values():
                        if later.k > it.live:
                            later.dead = True
                            SPECULATION["wasted_tokens"] += later.tokens
                            later.chain.close()
                            if later.pending is not None:
                                sched.cancel(later.pending)  # still queued: never started
                    open_items.pop(id(it), None)
                    if advance is not None:
                        advance(1)
                    return
                del it.runs[it.live]
                it.live += 1
                nxt = it.runs.get(it.live)
                if nxt is None:
                    it.runs[it.live] = nxt = _Attempt(it.live, it.spec.make(it.live))
                    drive(it, nxt, None)
                    return  # drive() settles again when this attempt returns
                SPECULATION["used"] += nxt.ahead
                for records in nxt.held:
                    journal.add(records)
                nxt.held.clear()

        for chain in chains:
            # a plain chain is an item of one attempt: driven the same way, never run ahead
            spec = chain if isinstance(chain, Attempts) else Attempts("", 0, 1, lambda _k, c=chain: c)
            if spec.first >= spec.end:
                continue
            it = _Item(spec)
            if spec.end - spec.first > 1:
                open_items[id(it)] = it
            it.runs[spec.first] = _Attempt(spec.first, spec.make(spec.first))
            drive(it, it.runs[spec.first], None, fresh=True)
        sched.run()
    ranks.finished(log)  # in a rank process the stage ends here; the coordinator writes its artifacts


def redraws(log: ItemLog, items: dict[str, dict], make_request: Callable[[str, dict, int], Request],
            judge: Callable[[dict, str], tuple[bool, str]], max_attempts: int, engine, durability: Durability,
            advance: Callable[[int], None], prepare: Callable[[str], str] = str.strip) -> dict[str, Optional[dict]]:
    """Sample each item until a sample passes `judge` or `max_attempts` is reached, every item a chain of its
    own: a failed sample is re-drawn at once. `prepare` cleans a generation before it is judged and saved.
    Records `{id: "<item>#<attempt>", item, attempt, text, ok, reason}`; a rerun continues every item from
    its last record. Returns item -> its passing record or None."""
    def state() -> tuple[Counter, dict]:
        tries: Counter = Counter()
        passed: dict[str, dict] = {}
        for r in log.records:
            tries[r["item"]] += 1
            if r["ok"] and r["item"] not in passed:
                passed[r["item"]] = r
        return tries, passed

    def attempt(i: str, k: int) -> Chain:
        c = yield make_request(i, items[i], k)
        text = prepare(c.text)
        ok, reason = judge(items[i], text)
        yield [{"id": f"{i}#{k}", "item": i, "attempt": k, "text": text, "ok": ok, "reason": reason}]
        return ok

    tries, passed = state()
    settled = [i for i in items if i in passed or tries[i] >= max_attempts]
    advance(len(settled))
    run_chains(engine, log, (Attempts(i, tries[i], max_attempts, functools.partial(attempt, i))
                             for i in items if i not in passed and tries[i] < max_attempts), durability, advance)
    _, passed = state()
    return {i: passed.get(i) for i in items}


def rejection_counts(log: ItemLog) -> dict[str, int]:
    return dict(Counter(r["reason"] for r in log.records if not r["ok"]))


def mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def resumable(name: str):
    """Wrap a stage body `body(ctx, folder, *args) -> (summary, artifact names)` with what every stage does:
    return the recorded summary if the stage already finished (and its artifacts still match), else run
    the body, time it, and write `done.json` last."""
    def wrap(body: Callable[..., tuple[dict, list[str]]]):
        @functools.wraps(body)
        def run(ctx: RoundContext, *args) -> dict:
            folder = ctx.stage_dir(name)
            done = stage_done(folder)
            if done:
                return done["summary"]
            start = time.time()
            from selflengthen import ranks

            with ranks.stage(run, ctx, folder, args):  # lets run_chains hand the stage's items to engine ranks
                summary, files = body(ctx, folder, *args)
            summary["seconds"] = time.time() - start
            mark_done(folder, files, summary=summary)
            return summary
        return run
    return wrap


def preparer(section: Any, fcfg: "FilterConfig") -> Callable[[str], str]:
    """How a generation is cleaned before the filter (`fcfg`) sees it, by the stage's section: stripped,
    with `trim_to_sentence` cut back to its last complete sentence when the token budget ended it
    mid-sentence (filters.trim_to_sentence), and with `repair` chatter lines and a closing loop cut off
    (filters.repair)."""
    from selflengthen.filters import repair, trim_to_sentence

    cut = trim_to_sentence if section.trim_to_sentence else str.strip
    if not section.repair:
        return cut
    return lambda text: repair(cut(text), fcfg)
