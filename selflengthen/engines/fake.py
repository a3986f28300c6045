"""A deterministic stand-in engine for testing orchestration, resume and fault injection.

Its text is a pure function of the request (rendered prompt, adapter folder, seed), so a killed and
resumed run must reproduce an uninterrupted one exactly. It is shaped like the real thing where the
orchestration cares: completions and answers opened with "Instruction 3:" (self-instruct) give an instruction line, very short
generations (the yes/no judge) give "Yes"/"No", everything else gives paragraphs whose length follows the
longest message (so extension lengthens), some without a final full stop or with a repeated 10-gram, so
the quality filter and the re-draws are exercised. AgentWrite's plan prompts get plan lines (some malformed)
and its write prompts one paragraph of about the step's planned words. An adapter makes answers longer, as training is
meant to. Never used by default: `engine=fake` selects it.

`stream(queue)` serves requests as they come (DESIGN §6). Without a latency model it answers them one at a
time, in queue order (`delay` seconds each, in real time). With one (`max_slots` = C) it simulates a
continuous-batching engine instead: at most C sequences in flight, each step emits one token for every
sequence in flight and costs `step_seconds + token_seconds * B` simulated seconds for B sequences, a
completion's length in tokens is `tokens(request, text)` (its word count, capped by max_new_tokens; a
subclass may declare another), and a finished slot is refilled from the queue before the next step. The
simulated clock and counters (`sim`) give the engine's utilization, tokens emitted / (steps x C), without
a model: bench/scheduler.py measures the stages' scheduling with it.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from selflengthen.engines.base import (Completion, GenerationStats, Progress, Request, RequestQueue,
                                       generate_via_stream)

_WORDS = (
    "river market engine theory garden signal harbor ledger canvas orbit valley method chapter lantern "
    "bridge pattern archive climate voyage circuit meadow quarry record summit tunnel vessel widget "
    "anchor beacon cipher delta ember fabric glacier horizon island jigsaw kernel lattice mosaic nectar "
    "oasis prism quartz relic saddle timber umbra velvet willow xenon yonder zephyr amber basalt cobalt "
    "dune falcon granite hollow ivory juniper kettle lagoon marble nimbus onyx pebble quiver raven sable"
).split()
_TOPICS = ("city planning", "a lighthouse keeper", "renewable energy", "a family recipe", "remote work",
           "the history of maps", "a startup pitch", "ocean plastics", "a retirement speech", "chess openings")

# AgentWrite's prompts (selflengthen/conf/prompts/*.yaml, agentwrite.plan / agentwrite.write), known by their plan lines:
# the plan prompt's example line holds a "[...]" placeholder, the write prompt holds real step lines.
_PLAN_ASK = re.compile(r"^(?:Paragraph|段落)\s*1 - (?:Main Point: |要点：)\[", re.MULTILINE)
_CJK = re.compile(r"[\u4e00-\u9fff]")
_LISTING = re.compile(r"(?:Instruction|指令)\s*\d+\s*[:：]\s*$")  # self-instruct's numbered list, opened for the 3rd
_STEP_LINE = re.compile(r"^(?:Paragraph|段落)\s*\d+ - (?:Main Point: |要点：).*(?:Word Count: |字数：)(\d+)",
                        re.MULTILINE)


@dataclass
class SimClock:
    """The latency model's simulated time and counters."""

    slots: int
    seconds: float = 0.0  # simulated engine time
    steps: int = 0  # decode steps run
    tokens: int = 0  # tokens emitted (= busy slot-steps: one token per sequence in flight per step)
    peak: int = 0  # most sequences in flight at once

    @property
    def utilization(self) -> float:
        """Tokens emitted / (steps x slots): 1.0 when every slot decoded at every step."""
        return self.tokens / (self.steps * self.slots) if self.steps else 0.0


class FakeEngine:
    name = "fake"

    def __init__(self, model_path: str = "fake", delay: float = 0.0, seed: int = 0,
                 max_slots: Optional[int] = None, step_seconds: float = 0.0, token_seconds: float = 0.0,
                 **_: object):
        if max_slots is None and (step_seconds or token_seconds):
            raise ValueError("engine.step_seconds / engine.token_seconds need engine.max_slots (the latency model)")
        self.model_path = model_path
        self.delay = delay  # real seconds per request: lets fault-injection tests kill mid-stage
        self.seed = seed
        self.step_seconds, self.token_seconds = step_seconds, token_seconds
        self.sim = SimClock(max_slots) if max_slots else None  # the latency model, when max_slots is set
        self.adapters: dict[str, Optional[str]] = {}
        self.stats = GenerationStats()

    @property
    def capacity(self) -> Optional[int]:
        """Sequences decoded at once (the latency model's C), for speculation; None without the model."""
        return self.sim.slots if self.sim else None

    def load(self) -> None:
        pass

    def set_adapters(self, adapters: dict[str, Optional[str]]) -> None:
        # an adapter is known by its content (as real weights would be), not by where it lies
        self.adapters = {role: _adapter_identity(path) for role, path in adapters.items()}

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass

    def generate(self, requests: Sequence[Request], progress: Optional[Progress] = None) -> list[str]:
        return generate_via_stream(self, requests, progress)

    def stream(self, queue: RequestQueue) -> Iterator[Completion]:
        return self._simulated(queue) if self.sim else self._one_by_one(queue)

    def tokens(self, request: Request, text: str) -> int:
        """A completion's length in tokens for the latency model: its words, within the request's budget."""
        return max(1, min(len(text.split()), request.params.max_new_tokens))

    def _finish(self, r: Request) -> Completion:
        if self.delay:
            time.sleep(self.delay)
        text = self._one(r)
        n = self.tokens(r, text)
        self.stats.requests += 1
        self.stats.new_tokens += n
        # a text as long as the budget is one the budget cut: as a real engine says, it did not end itself
        return Completion(r.id, text, new_tokens=n,
                          finish_reason="length" if len(text.split()) >= r.params.max_new_tokens else "stop")

    def _one_by_one(self, queue: RequestQueue) -> Iterator[Completion]:
        while queue:
            yield self._finish(queue.take(1)[0])

    def _simulated(self, queue: RequestQueue) -> Iterator[Completion]:
        """Continuous batching in simulated time, event by event: between two finishes the batch is constant,
        so the steps in between are accounted in one go."""
        sim, order = self.sim, 0
        flight: list[tuple[int, int, Completion]] = []  # (step it finishes at, order, completion)
        while True:
            if queue.cancelled:  # the consumer no longer needs these: their slots are free from now on
                kept = [f for f in flight if f[2].id not in queue.cancelled]
                queue.cancelled.clear()
                if len(kept) < len(flight):
                    flight = kept
                    heapq.heapify(flight)
            for r in queue.take(sim.slots - len(flight)):
                c = self._finish(r)
                heapq.heappush(flight, (sim.steps + c.new_tokens, order, c))
                order += 1
            if not flight:
                return
            sim.peak = max(sim.peak, len(flight))
            end, batch = flight[0][0], len(flight)
            sim.seconds += (end - sim.steps) * (self.step_seconds + self.token_seconds * batch)
            sim.tokens += (end - sim.steps) * batch
            sim.steps = end
            while flight and flight[0][0] == end:  # the consumer may queue more between these yields
                yield heapq.heappop(flight)[2]

    def _one(self, r: Request) -> str:
        folder = self.adapters.get(r.adapter) if r.adapter else None
        key = json.dumps([r.prompt, r.messages, r.assistant_prefix, folder, r.params.seed, self.seed])
        rng = random.Random(hashlib.sha256(key.encode()).hexdigest())
        if r.prompt is not None or _LISTING.search(r.assistant_prefix):
            return self._instruction(rng, "指令" in (r.prompt or r.assistant_prefix))
        if r.params.max_new_tokens <= 8:
            return "Yes, it is." if rng.random() < 0.8 else "No."
        user = r.messages[-1][1] if r.messages else ""
        if _PLAN_ASK.search(user):  # AgentWrite's plan prompt: its example line has a [placeholder]
            return self._plan(rng, extra=1 if folder else 0)
        steps = _STEP_LINE.findall(user)
        if steps:  # AgentWrite's write prompt: the plan, then (last) the step to write now
            return self._step(rng, int(steps[-1]), r.params.max_new_tokens, 1.3 if folder else 1.0)
        source = max((len(c.split()) for _, c in r.messages), default=20)
        factor = rng.uniform(0.7, 2.2) * (1.4 if folder else 1.0)
        n = min(max(int(source * factor) + 30, r.params.min_new_tokens), int(r.params.max_new_tokens * 0.75))
        text = self._paragraphs(rng, max(n, 5))
        roll = rng.random()
        if roll < 0.15:
            text = text.rstrip(".")  # no terminal punctuation
        elif roll < 0.22:
            words = text.split()
            if len(words) > 24:
                text = text + " " + " ".join(words[:12]) + "."  # a repeated 10-gram
        if _CJK.search(user):  # a Chinese prompt: sentences end with 。 (the zh filter's marks)
            text = text.replace(".", "。")
        return text

    @staticmethod
    def _instruction(rng: random.Random, zh: bool = False) -> str:
        if rng.random() < 0.1:
            return " ok"  # too short: rejected by the word bounds
        n = rng.randint(5, 25)
        words = " ".join(rng.choice(_WORDS) for _ in range(n))
        if zh:  # a Chinese list asks for a Chinese instruction (its answers then end with 。)
            return f"写一篇关于{rng.choice(_TOPICS)}的详细长文，涵盖 {words}。\n"
        return f" Write a detailed, multi-section article about {rng.choice(_TOPICS)}, covering {words}.\n"

    @staticmethod
    def _plan(rng: random.Random, extra: int) -> str:
        """A plan in AgentWrite's format (2-5 steps of 200-500 words); about one in five is malformed (prose
        only, a count out of the default bounds, a skipped number) so the plan stage's re-draws are exercised."""
        roll = rng.random()
        if roll < 0.1:
            return "Sure, I will plan this answer carefully before writing it."
        numbers = list(range(1, rng.randint(2, 5) + extra + 1))
        if roll < 0.15:
            numbers[-1] += 1  # misnumbered
        lines = [f"Paragraph {n} - Main Point: Cover the {' '.join(rng.choice(_WORDS) for _ in range(4))}. - "
                 f"Word Count: {rng.randrange(200, 550, 50)} words" for n in numbers]
        if 0.15 <= roll < 0.2:
            lines[0] = lines[0].rsplit("Word Count:", 1)[0] + "Word Count: 40 words"  # under plan.min_words
        return "Here is the plan:\n" + "\n".join(lines)

    @staticmethod
    def _step(rng: random.Random, planned: int, max_new_tokens: int, factor: float) -> str:
        """One paragraph of about the planned words (within the token budget); sometimes echoing a header
        (cleaned by the write stage) or cut off without a full stop (re-drawn)."""
        n = max(5, min(int(planned * rng.uniform(0.6, 1.1) * factor), int(max_new_tokens * 0.75)))
        words = [rng.choice(_WORDS) for _ in range(n)]
        text = " ".join(" ".join(words[i:i + 20]).capitalize() + "." for i in range(0, n, 20))
        roll = rng.random()
        if roll < 0.12:
            return text.rstrip(".")
        if roll < 0.2:
            return f"Paragraph {rng.randint(1, 5)}:\n{text}"
        return text

    @staticmethod
    def _paragraphs(rng: random.Random, n: int) -> str:
        paras, left = [], n
        while left > 0:
            k = min(left, rng.randint(25, 60))
            paras.append(" ".join(rng.choice(_WORDS) for _ in range(k)).capitalize() + ".")
            left -= k
        return "\n\n".join(paras)


def _adapter_identity(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    config = Path(path) / "adapter_config.json"
    return config.read_text() if config.exists() else Path(path).name
