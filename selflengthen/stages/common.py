"""What every stage of a round shares: its context (folder, seeds, settings, engine, trainer), the decoding
settings, the stream scheduler (item chains fed by one engine stream, records made durable by a `Journal`),
re-draws on top of it, and the resumable wrapper."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable, Iterator, Optional, Sequence

from selflengthen.runfolder import layout
from selflengthen.support.checks import rule
from selflengthen.engines.base import Completion, Request, RequestQueue, SamplingParams, stream_in_batches
from selflengthen.runfolder.store import ItemLog, mark_done, stage_done

if TYPE_CHECKING:  # pragma: no cover
    from selflengthen.writing.filters import FilterConfig
    from selflengthen.methods.base import Method


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

    s: Any  # the run's Settings: settings.py sits above the stages, so it is not imported, not even for the type
    round_no: int
    engine: Any  # an Engine, loaded lazily on first use (engines/session.py LazyEngine)
    adapters: dict  # adapter name -> folder used for generation in this round (None = base)
    method: Optional["Method"] = None
    trainer: Optional[Callable] = None
    train_cfg: Any = None
    model_path: Optional[Callable[[], str]] = None
    folder: Optional[Path] = None  # default: the round's folder; the final stages use final/
    adapters_out: dict = field(default_factory=dict)  # set by the train stage
    defer: tuple = ()  # roles the train stage leaves for later (the last round's unused ones: run.defer_unused)
    # work of the next stage started ahead on this stage's engine stream (`Handover`): handover_out is what
    # the running stage offers to the next one, handover_in what the previous stage started for this one
    handover_out: Optional["Handover"] = None
    handover_in: Optional["Handover"] = None

    def __post_init__(self) -> None:
        if not self.adapters_out:
            self.adapters_out = dict(self.adapters)

    def __getstate__(self) -> dict:  # a rank process gets the context without the live engine stream
        return {**self.__dict__, "handover_out": None, "handover_in": None}

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

    def made_with(self) -> str:
        """The digest of the semantic config a stage's done record keeps (manifest.digest): what made the stage
        stays known when manifest.json is deleted."""
        from selflengthen.runfolder.manifest import digest

        return digest(self.s.semantic)

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
    also from inside a `then`), and `run()` feeds the engine, calling each request's `then(completion)` as
    soon as it finishes. A request id is in flight at most once. `next_step=True` marks the continuation of
    a chain under way: it is served before first requests.

    `run()` alone runs until nothing is queued or in flight, then closes the stream. `run(until)` returns as
    soon as `until()` holds and leaves the stream open with whatever is still queued or in flight: a later
    `run()` (the next stage, taking over work started ahead for it: `Handover`) goes on with the same stream,
    so the engine never drains between the two. `close()` ends the stream and forgets what it still held."""

    def __init__(self, engine):
        self.engine = engine
        self.queue = ChainQueue()
        self._then: dict[str, Callable[[Completion], None]] = {}
        # `spares`: each may submit up to n speculative requests and returns how many it did; asked in order
        # when nothing is queued and the engine (one that says how many sequences it decodes at once:
        # `capacity`) has idle slots. The capacity is asked once a completion is back, when the engine is
        # loaded (never to load it).
        self.spares: list[Callable[[int], Optional[int]]] = []
        self.capacity: Optional[int] = None
        self._dropped: set[str] = set()  # cancelled while in flight
        self._stream_it: Optional[Iterator[Completion]] = None  # the engine stream, open across run() calls

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
        checks `queue.cancelled`, else finished and dropped here), and not waited for."""
        if self.queue.cancel(request_id):
            del self._then[request_id]
        elif request_id in self._then:
            self._dropped.add(request_id)

    def run(self, until: Optional[Callable[[], bool]] = None) -> None:
        try:
            while until is None or not until():
                if not self.queue and self._dropped.issuperset(self._then):
                    break  # nothing to wait for: only cancelled work is left in flight, if any
                if self._stream_it is None:
                    self._stream_it = self._stream()
                c = next(self._stream_it, None)
                if c is None:  # the stream ended: nothing was queued or in flight any more
                    self._stream_it = None
                    waiting = [rid for rid in self._then if rid not in self._dropped]
                    if waiting and not self.queue:
                        raise RuntimeError(f"the engine's stream ended with {len(waiting)} request(s) "
                                           f"unanswered (e.g. {waiting[0]})")
                    self._forget_dropped()
                    continue
                self._dropped.discard(c.id)
                then = self._then.pop(c.id, None)
                if then is not None:
                    then(c)
                self._offer_spare()
        except BaseException:
            self.close()
            raise
        if until is None:
            self.close()

    def close(self) -> None:
        """End the stream (an engine stream closed early stops what it still decodes) and forget every
        request still queued or in flight."""
        it, self._stream_it = self._stream_it, None
        if it is not None and hasattr(it, "close"):
            it.close()
        self.queue.take()  # everything still queued is dropped with the stream
        self.queue.cancelled.clear()
        self._then.clear()
        self._dropped.clear()

    def _forget_dropped(self) -> None:
        for rid in self._dropped:
            self._then.pop(rid, None)
        self._dropped.clear()

    def _offer_spare(self) -> None:
        if not self.spares:
            return
        if self.capacity is None:
            self.capacity = engine_capacity(self.engine) or 0
        if self.capacity and not self.queue:
            # nothing queued: every pending request is in flight, but a cancelled one no longer holds a slot
            # (engines that state a capacity drop what `queue.cancelled` names)
            idle = self.capacity - (len(self._then) - len(self._dropped))
            for spare in self.spares:
                if idle <= 0:
                    return
                idle -= spare(idle) or 0

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
    # what the item is made from (e.g. the row it extends): an item started ahead of its stage (`Handover`) is
    # taken over only if the stage makes it from an equal source
    source: Any = None
    on_success: Optional[Callable[[int], None]] = None  # called with k when attempt k settles the item
    # how long one attempt runs, relative to the stage's other items (the extension: the words of the text
    # each pass rewrites); idle slots run attempts ahead in proportion to it (`_Driver.spare`)
    weight: float = 1.0


# What speculation did in this process (for benches; never part of an artifact): attempts started ahead of
# their turn (of which `held_started` by items of a next stage, records held), those of them whose records were
# used, and the tokens of the ones dropped; items of a next stage started ahead of it (`Handover`), and those it
# took over.
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

    def __init__(self, spec: Attempts, driver: "_Driver"):
        self.spec, self.live, self.runs = spec, spec.first, {}  # k -> _Attempt
        self.settled = False
        self.driver = driver  # whose journal its records go to; changes when a stage takes the item over
        self.held: list = []  # the live attempt's records while the item has no journal (started ahead)

    @property
    def next_k(self) -> int:
        return max(self.runs, default=self.live - 1) + 1


class _Driver:
    """Drives items through a `Scheduler`: a chain's next request is queued the moment its previous completion
    has been judged; the live attempt's records go to `journal` (None: held on the item until a stage
    takes it over); `advance(1)` as each item settles. `spare(n)` starts up to n attempts ahead of their
    turn (`Attempts`)."""

    def __init__(self, sched: Scheduler, journal: Optional[Journal], advance: Optional[Callable[[int], None]]):
        self.sched, self.journal, self.advance = sched, journal, advance
        self.open: dict[int, _Item] = {}  # items with attempts left to run ahead, not settled yet, in start order
        self.unsettled = 0

    def start(self, spec: Attempts) -> _Item:
        it = _Item(spec, self)
        self.unsettled += 1
        if spec.end - spec.first > 1:
            self.open[id(it)] = it
        it.runs[spec.first] = _Attempt(spec.first, spec.make(spec.first))
        self.drive(it, it.runs[spec.first], None, fresh=True)
        return it

    def adopt(self, it: _Item) -> None:
        """Take over an item another driver started ahead (records held): they reach this journal now."""
        old = it.driver
        old.open.pop(id(it), None)
        old.unsettled -= not it.settled
        it.driver = self
        for records in it.held:
            self._log(it, records)
        it.held.clear()
        if it.settled:
            if self.advance is not None:
                self.advance(1)
            return
        self.unsettled += 1
        if it.next_k < it.spec.end:
            self.open[id(it)] = it

    def drop(self, it: _Item) -> None:
        """Stop an item for good (started ahead, and its stage does not take it): nothing of it is logged."""
        for run in it.runs.values():
            self._kill(run)
        self.open.pop(id(it), None)
        self.unsettled -= not it.settled
        it.settled = True
        it.held.clear()

    def spare(self, n: int, depth: Optional[int] = None) -> int:
        """Start up to n attempts ahead of their turn, spread over the items under way: each spare slot goes
        to the item that, given it, would have the fewest attempts running (the live one, those ahead and this
        one) per unit of its `weight` (ties: the one started first). Equal weights: one more per item, round
        after round, instead of one item's attempts all ahead before the next gets any. An item whose attempts
        run twice as long keeps twice as many running: its chains are what the stage's end would wait for, and
        a short item's attempt still fits in the tail. With `depth`, none more than `depth` attempts ahead."""

        def room(it: _Item) -> bool:
            return (id(it) in self.open and it.next_k < it.spec.end  # open: not settled (settle/drop remove it)
                    and (depth is None or it.next_k - it.live <= depth))

        def key(it: _Item) -> float:
            return (it.next_k - it.live + 1) / it.spec.weight

        heap = [(key(it), order, it) for order, it in enumerate(self.open.values()) if room(it)]
        heapq.heapify(heap)
        total = 0
        while heap and n > total:
            _, order, it = heapq.heappop(heap)
            if not room(it):
                continue
            k = it.next_k
            it.runs[k] = _Attempt(k, it.spec.make(k), ahead=True)
            SPECULATION["started"] += 1
            SPECULATION["held_started"] += self.journal is None
            self.drive(it, it.runs[k], None)
            total += 1
            if room(it):
                heapq.heappush(heap, (key(it), order, it))
        return total

    def _log(self, it: _Item, records: list) -> None:
        if self.journal is None:
            it.held.append(records)
        else:
            self.journal.add(records)

    def _kill(self, run: _Attempt) -> None:
        if run.dead:
            return
        run.dead = True
        SPECULATION["wasted_tokens"] += run.tokens
        run.chain.close()
        if run.pending is not None:
            self.sched.cancel(run.pending)  # still queued: never started; in flight: not waited for

    def drive(self, it: _Item, run: _Attempt, value: Optional[Completion], fresh: bool = False) -> None:
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
                    # the item's driver at the time the completion comes back (a stage may take it over)
                    self.sched.submit(out, lambda c: it.driver.drive(it, run, c), next_step=under_way)
                    return
                if run.k == it.live:
                    self._log(it, out)
                else:
                    run.held.append(out)
                value = None
        except StopIteration as stop:
            run.result = bool(stop.value)
            self.settle(it)

    def settle(self, it: _Item) -> None:
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
                        self._kill(later)
                self.open.pop(id(it), None)
                self.unsettled -= 1
                if run.result and it.spec.on_success is not None:
                    it.spec.on_success(it.live)
                if self.advance is not None:
                    self.advance(1)
                return
            del it.runs[it.live]
            it.live += 1
            nxt = it.runs.get(it.live)
            if nxt is None:
                it.runs[it.live] = nxt = _Attempt(it.live, it.spec.make(it.live))
                self.drive(it, nxt, None)
                return  # drive() settles again when this attempt returns
            SPECULATION["used"] += nxt.ahead
            for records in nxt.held:
                self._log(it, records)
            nxt.held.clear()


class Handover:
    """Items of the next stage, started ahead of it on the same engine stream (DESIGN §6).

    A stage whose rows the next one builds on (initial answers -> their extension) `offer`s each row as soon
    as it is final, with a priority (the longest answers first: length-aware sampling keeps them). When the
    engine has idle slots and the stage itself has nothing to run ahead, `spare` starts the next stage's items
    for the offered rows, their records held in memory. The stage returns as soon as its own items are
    settled, leaving the stream open; the next stage then takes over (`take`) each item it makes from an
    equal source — held records first, in order, into its own log — and `close` drops the rest (rows that
    length-aware sampling left out). Nothing is logged twice or out of order, so the artifacts are the same
    as without it; a crash loses only what was held, which a rerun makes again."""

    def __init__(self, engine, make: Callable[[dict], list[Attempts]]):
        self.sched = Scheduler(engine)
        self.driver = _Driver(self.sched, None, None)
        self.make = make
        self._rows: list[tuple[float, int, dict]] = []  # heap of (-priority, offer number, row)
        self._offered = 0  # the tie-breaker: equal priorities in offer order, rows never compared
        self._items: dict[str, _Item] = {}

    def offer(self, row: dict, priority: float) -> None:
        self._offered += 1
        heapq.heappush(self._rows, (-priority, self._offered, row))

    def spare(self, n: int) -> int:
        started = 0
        while started < n and self._rows:
            row = heapq.heappop(self._rows)[2]
            for spec in self.make(row):
                if spec.first < spec.end:
                    self._items[spec.item] = self.driver.start(spec)
                    SPECULATION["handover_started"] += 1
                    started += 1
        return started

    def take(self, spec: Attempts) -> Optional[_Item]:
        """The item started ahead for `spec`, if it was made from the same source and attempt; else None."""
        it = self._items.pop(spec.item, None)
        if it is None:
            return None
        if it.spec.source != spec.source or it.spec.first != spec.first or it.spec.end != spec.end:
            self.driver.drop(it)
            return None
        SPECULATION["handover_used"] += 1
        return it

    def close_rest(self) -> None:
        """Drop the items not taken over (the next stage does not make them: e.g. rows length-aware sampling
        left out) and the rows not started; the stream goes on."""
        for it in self._items.values():
            self.driver.drop(it)
        self._items.clear()
        self._rows.clear()

    def close(self) -> None:
        """Drop what was not taken over and end the stream."""
        self.close_rest()
        self.sched.close()


def run_chains(engine, log: ItemLog, chains: Iterable[Chain | Attempts], durability: Durability,
               advance: Optional[Callable[[int], None]] = None, *, ahead: Optional[Handover] = None,
               takes: Optional[Handover] = None) -> None:
    """Drive every chain to its end through one engine stream (DESIGN §6). A chain's next request is queued
    the moment its previous completion has been judged, so the engine stays full and no chain waits for
    another; records go to `log` through a `Journal` (durable every N records or T seconds, and at the
    end). `advance(1)` is called as each chain ends. An `Attempts` item runs its attempts in turn, and with
    `durability.speculate` idle engine slots run its later attempts ahead (see `Attempts`).

    `ahead`: the next stage's `Handover` — idle slots the stage cannot use start the next stage's items, and
    the call returns once its own items are settled, with the stream still running. `takes`: this stage is
    that next stage — it takes over the items started for it and goes on with the same stream.
    With `engine.data_parallel_size` > 1 the chains run on engine ranks instead, each writing its own shard,
    merged into `log` here (selflengthen/engines/ranks.py)."""
    from selflengthen.engines import ranks

    chains = ranks.share(engine, log, chains, advance)
    if chains is None:  # every rank ran its share: their records are in `log`
        return
    sched = ahead.sched if ahead is not None else takes.sched if takes is not None else Scheduler(engine)
    with Journal(log, durability) as journal:
        driver = _Driver(sched, journal, advance)
        # idle slots go first to the next attempt of items under way (needed whenever the live one fails), then
        # to the next stage's items (needed unless length-aware sampling drops their row), then further ahead,
        # last to later attempts of the next stage's items already started (their records held, like theirs)
        sched.spares = [] if not durability.speculate else [driver.spare] if ahead is None else \
            [functools.partial(driver.spare, depth=1), ahead.spare, driver.spare, ahead.driver.spare]
        for chain in chains:
            # a plain chain is an item of one attempt: driven the same way, never run ahead
            spec = chain if isinstance(chain, Attempts) else Attempts("", 0, 1, lambda _k, c=chain: c)
            if spec.first >= spec.end:
                continue
            started = takes.take(spec) if takes is not None and spec.item else None
            if started is not None:
                driver.adopt(started)
            else:
                driver.start(spec)
        if takes is not None:
            takes.close_rest()
        sched.run(until=(lambda: driver.unsettled == 0) if ahead is not None else None)
    ranks.finished(log)  # in a rank process the stage ends here; the coordinator writes its artifacts


def redraws(log: ItemLog, items: dict[str, dict], make_request: Callable[[str, dict, int], Request],
            judge: Callable[[dict, str], tuple[bool, str]], max_attempts: int, engine, durability: Durability,
            advance: Callable[[int], None], prepare: Callable[[str], str] = str.strip,
            on_pass: Optional[Callable[[str, dict], None]] = None,
            ahead: Optional[Handover] = None) -> dict[str, Optional[dict]]:
    """Sample each item until a sample passes `judge` or `max_attempts` is reached, every item a chain of its
    own: a failed sample is re-drawn at once. `prepare` cleans a generation before it is judged and saved.
    Records `{id: "<item>#<attempt>", item, attempt, text, ok, reason, finish}`; a sample the token budget
    cut (`finish` "length") fails as `unfinished` whatever its text (`unfinished`). A rerun continues every item from
    its last record. Returns item -> its passing record or None. `on_pass(item, record)` is told each item's
    passing record as soon as it is final (those already in the log first); `ahead`: see `run_chains`."""
    def state() -> tuple[Counter, dict]:
        tries: Counter = Counter()
        passed: dict[str, dict] = {}
        for r in log.records:
            tries[r["item"]] += 1
            if r["ok"] and r["item"] not in passed:
                passed[r["item"]] = r
        return tries, passed

    passing: dict[str, dict[int, dict]] = {}  # item -> attempt -> its passing record, until the item settles

    def attempt(i: str, k: int) -> Chain:
        c = yield make_request(i, items[i], k)
        text = prepare(c.text)
        ok, reason = unfinished(c) or judge(items[i], text)
        record = {"id": f"{i}#{k}", "item": i, "attempt": k, "text": text, "ok": ok, "reason": reason,
                  "finish": c.finish_reason}
        if ok and on_pass is not None:
            passing.setdefault(i, {})[k] = record
        yield [record]
        return ok

    def settled_by(i: str, k: int) -> None:
        on_pass(i, passing.pop(i)[k])  # type: ignore[misc]

    tries, passed = state()
    settled = [i for i in items if i in passed or tries[i] >= max_attempts]
    advance(len(settled))
    if on_pass is not None:
        for i in items:
            if i in passed:
                on_pass(i, passed[i])
    run_chains(engine, log, (Attempts(i, tries[i], max_attempts, functools.partial(attempt, i),
                                      on_success=functools.partial(settled_by, i) if on_pass else None)
                             for i in items if i not in passed and tries[i] < max_attempts), durability, advance,
               ahead=ahead)
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
            from selflengthen.engines import ranks

            with ranks.stage(run, ctx, folder, args):  # lets run_chains hand the stage's items to engine ranks
                summary, files = body(ctx, folder, *args)
            summary["seconds"] = time.time() - start
            mark_done(folder, files, summary=summary, semantic=ctx.made_with())
            return summary
        return run
    return wrap


def unfinished(c: Completion) -> Optional[tuple[bool, str]]:
    """(False, "unfinished") for a completion the token budget cut (finish_reason "length"): its end is not
    where the model stopped, so it never becomes a training row, however it reads; else None."""
    return (False, UNFINISHED) if c.finish_reason == "length" else None


UNFINISHED = "unfinished"


def preparer(section: Any, fcfg: "FilterConfig") -> Callable[[str], str]:
    """How a generation is cleaned before the filter (`fcfg`) sees it, by the stage's section: stripped, and
    with `repair` the chatter lines naming a meta-word at either edge cut off (filters.repair). Nothing that
    moves the text's end to a point the model did not stop at: no trimming of a cut-off sentence, no cut
    before a loop (docs/DECISIONS.md)."""
    from selflengthen.writing.filters import repair

    if not section.repair:
        return str.strip
    return lambda text: repair(text.strip(), fcfg)
