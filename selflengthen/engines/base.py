"""The engine contract: batched requests in, texts out.

Every engine (transformers, vLLM, the fake one used by orchestration tests) implements `Engine`.
A request is either a chat (a list of messages, rendered with the model's chat template, optionally
followed by `assistant_prefix` — the start of the assistant's answer that the model must continue)
or a raw completion `prompt`. Each request names the adapter it runs with: None (the base model) or any
adapter name the method declares ("generator", "extender", "writer", ...). The engine maps names to the
adapter folders it was given in `set_adapters`; a name with no folder (round 1) runs on the base model.

Two ways to generate (DESIGN §6):
- `stream(queue)` — the engine pulls requests from a `RequestQueue` whenever it has room and yields each
  `Completion` as soon as it finishes; the consumer may add more requests to the queue between yields
  (a re-draw, the next stage of a chain). The stream ends when the queue is empty and nothing is in flight.
- `generate(requests)` — the batch form: one text per request, in order (built on `stream`).
Engines that cannot stream natively use `stream_in_batches` (static batches of the queue's head).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings; `seed` makes a sampled request reproducible where the engine allows."""

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.1
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None
    min_new_tokens: int = 0  # no end-of-sequence before this many new tokens (0 = the model may stop at once)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Request:
    """One generation. Exactly one of `messages` (chat) or `prompt` (raw completion) is set."""

    id: str
    params: SamplingParams
    messages: Optional[tuple[tuple[str, str], ...]] = None  # ((role, content), ...)
    prompt: Optional[str] = None
    assistant_prefix: str = ""  # chat only: text already placed at the start of the answer
    adapter: Optional[str] = None  # None = base model, else an adapter name given to set_adapters

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError(f"request {self.id}: set exactly one of messages or prompt")
        if self.adapter is not None and (not isinstance(self.adapter, str) or not self.adapter):
            raise ValueError(f"request {self.id}: adapter must be None or a non-empty adapter name")
        if self.assistant_prefix and self.messages is None:
            raise ValueError(f"request {self.id}: assistant_prefix needs a chat request")

    @staticmethod
    def chat(id: str, messages: Sequence[tuple[str, str]], params: SamplingParams, *,
             adapter: Optional[str] = None, assistant_prefix: str = "") -> "Request":
        return Request(id=id, params=params, messages=tuple((r, c) for r, c in messages),
                       adapter=adapter, assistant_prefix=assistant_prefix)

    @staticmethod
    def completion(id: str, prompt: str, params: SamplingParams, *,
                   adapter: Optional[str] = None) -> "Request":
        return Request(id=id, params=params, prompt=prompt, adapter=adapter)


def render_prompt(tokenizer, request: Request) -> str:
    """The exact text the model continues: chat template up to the assistant turn (+ prefix), or the raw prompt."""
    if request.prompt is not None:
        return request.prompt
    messages = [{"role": r, "content": c} for r, c in request.messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + request.assistant_prefix


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Truncate at the first stop string (engines that cannot stop on strings natively use this)."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


Progress = Callable[[int], None]  # called with the number of requests just finished


@dataclass(frozen=True)
class Completion:
    """One finished request: its id, the continuation text and token counts."""

    id: str
    text: str
    prompt_tokens: int = 0
    new_tokens: int = 0
    finish_reason: str = "stop"  # "stop" (eos / stop string) or "length" (budget reached)


class RequestQueue:
    """Requests waiting for an engine. The consumer of a stream `add`s to it between completions; the
    engine `take`s from it whenever it has free slots. Single-threaded: no locking."""

    def __init__(self, requests: Iterable[Request] = ()):
        self._q: deque[Request] = deque(requests)
        # ids the consumer no longer needs while they are in flight: an engine may stop decoding them (and
        # then never yields them); one that does not check this set simply finishes them
        self.cancelled: set[str] = set()

    def add(self, requests: Iterable[Request] | Request) -> None:
        if isinstance(requests, Request):
            self._q.append(requests)
        else:
            self._q.extend(requests)

    def take(self, n: Optional[int] = None) -> list[Request]:
        """Up to `n` requests from the head (all when n is None)."""
        n = len(self._q) if n is None else min(n, len(self._q))
        return [self._q.popleft() for _ in range(n)]

    def __len__(self) -> int:
        return len(self._q)

    def cancel(self, request_id: str) -> bool:
        """Withdraw a request: True if it was still queued (removed), else it is marked `cancelled`."""
        for r in self._q:
            if r.id == request_id:
                self._q.remove(r)
                return True
        self.cancelled.add(request_id)
        return False

    def __bool__(self) -> bool:
        return bool(self._q)


def stream_in_batches(engine, queue: RequestQueue, batch_size: int) -> Iterator[Completion]:
    """A stream for engines without continuous batching: static batches of up to `batch_size` requests from
    the queue's head, each completion yielded as soon as its batch returns."""
    while queue:
        batch = queue.take(batch_size)
        for req, text in zip(batch, engine.generate(batch)):
            yield Completion(req.id, text)


def complete(engine, requests: Sequence[Request], progress: Optional[Progress] = None) -> list[Completion]:
    """The completions (text and why each ended) of `requests`, in request order, from the engine's stream;
    an engine with only `generate` (a test double) reports every text as ended by the model."""
    if not hasattr(engine, "stream"):
        return [Completion(r.id, t) for r, t in zip(requests, engine.generate(requests, progress))]
    slots: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        slots.setdefault(r.id, []).append(i)
    out: list[Optional[Completion]] = [None] * len(requests)
    for c in engine.stream(RequestQueue(requests)):
        out[slots[c.id].pop(0)] = c
        if progress is not None:
            progress(1)
    return out  # type: ignore[return-value]


def generate_via_stream(engine, requests: Sequence[Request], progress: Optional[Progress] = None) -> list[str]:
    """The batch form on top of `engine.stream`: one text per request, in request order (ids may repeat)."""
    return [c.text for c in complete(engine, requests, progress)]


@dataclass
class GenerationStats:
    """Counters an engine keeps so benches and summaries can report throughput."""

    requests: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class Engine(Protocol):
    """Lifecycle: construct (cheap) -> load() -> set_adapters() -> stream()/generate()* -> close()."""

    stats: GenerationStats

    def load(self) -> None:
        """Load the base model. Heavy libraries are imported here, not at module import."""

    def set_adapters(self, adapters: dict[str, Optional[str]]) -> None:
        """Map adapter names ("generator", "extender", ...) to LoRA adapter folders (None = base model)."""

    def stream(self, queue: RequestQueue) -> Iterator[Completion]:
        """Yield each completion as soon as it finishes; requests added to `queue` meanwhile are served too."""

    def generate(self, requests: Sequence[Request], progress: Optional[Progress] = None) -> list[str]:
        """Generate one text per request, in request order. The text is the continuation only."""

    def release(self) -> None:
        """Give accelerator memory back before training (sleep or shut down); generate() reloads."""

    def close(self) -> None:
        """Free everything."""
