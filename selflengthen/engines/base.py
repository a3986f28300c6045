"""The engine contract: batched requests in, texts out.

Every engine (transformers, vLLM, the fake one used by orchestration tests) implements `Engine`.
A request is either a chat (a list of messages, rendered with the model's chat template, optionally
followed by `assistant_prefix` — the start of the assistant's answer that the model must continue)
or a raw completion `prompt`. Each request names the adapter it runs with: None (the base model),
"generator" or "extender". The engine maps the role names to the adapter folders it was given in
`set_adapters`; a role with no folder (round 1) runs on the base model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

ROLES = ("generator", "extender")


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
    adapter: Optional[str] = None  # None | "generator" | "extender"

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError(f"request {self.id}: set exactly one of messages or prompt")
        if self.adapter is not None and self.adapter not in ROLES:
            raise ValueError(f"request {self.id}: adapter must be None or one of {ROLES}")
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


@dataclass
class GenerationStats:
    """Counters an engine keeps so benches and summaries can report throughput."""

    requests: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class Engine(Protocol):
    """Lifecycle: construct (cheap) -> load() -> set_adapters() -> generate()* -> close()."""

    stats: GenerationStats

    def load(self) -> None:
        """Load the base model. Heavy libraries are imported here, not at module import."""

    def set_adapters(self, adapters: dict[str, Optional[str]]) -> None:
        """Map roles ("generator", "extender") to LoRA adapter folders (None = base model)."""

    def generate(self, requests: Sequence[Request], progress: Optional[Progress] = None) -> list[str]:
        """Generate one text per request, in request order. The text is the continuation only."""

    def release(self) -> None:
        """Give accelerator memory back before training (sleep or shut down); generate() reloads."""

    def close(self) -> None:
        """Free everything."""
