"""A deterministic stand-in engine for testing orchestration, resume and fault injection.

Its text is a pure function of the request (rendered prompt, adapter folder, seed), so a killed and
resumed run must reproduce an uninterrupted one exactly. It is shaped like the real thing where the
orchestration cares: completions that end in "Instruction 3:" give an instruction line, very short
generations (the yes/no judge) give "Yes"/"No", everything else gives paragraphs whose length follows the
longest message (so extension lengthens), some without a final full stop or with a repeated 10-gram, so
the quality filter and the re-draw waves are exercised. An adapter makes answers longer, as training is
meant to. Never used by default: `engine=fake` selects it.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Optional, Sequence

from selflengthen.engines.base import GenerationStats, Progress, Request

_WORDS = (
    "river market engine theory garden signal harbor ledger canvas orbit valley method chapter lantern "
    "bridge pattern archive climate voyage circuit meadow quarry record summit tunnel vessel widget "
    "anchor beacon cipher delta ember fabric glacier horizon island jigsaw kernel lattice mosaic nectar "
    "oasis prism quartz relic saddle timber umbra velvet willow xenon yonder zephyr amber basalt cobalt "
    "dune falcon granite hollow ivory juniper kettle lagoon marble nimbus onyx pebble quiver raven sable"
).split()
_TOPICS = ("city planning", "a lighthouse keeper", "renewable energy", "a family recipe", "remote work",
           "the history of maps", "a startup pitch", "ocean plastics", "a retirement speech", "chess openings")


class FakeEngine:
    name = "fake"

    def __init__(self, model_path: str = "fake", delay: float = 0.0, seed: int = 0, **_: object):
        self.model_path = model_path
        self.delay = delay  # seconds per request: lets fault-injection tests kill mid-stage
        self.seed = seed
        self.adapters: dict[str, Optional[str]] = {}
        self.stats = GenerationStats()

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
        out = []
        for r in requests:
            if self.delay:
                time.sleep(self.delay)
            out.append(self._one(r))
            if progress:
                progress(1)
        self.stats.requests += len(requests)
        self.stats.new_tokens += sum(len(t.split()) for t in out)
        return out

    def _one(self, r: Request) -> str:
        folder = self.adapters.get(r.adapter) if r.adapter else None
        key = json.dumps([r.prompt, r.messages, r.assistant_prefix, folder, r.params.seed, self.seed])
        rng = random.Random(hashlib.sha256(key.encode()).hexdigest())
        if r.prompt is not None:
            return self._instruction(rng)
        if r.params.max_new_tokens <= 8:
            return "Yes, it is." if rng.random() < 0.8 else "No."
        source = max((len(c.split()) for _, c in r.messages), default=20)
        factor = rng.uniform(0.7, 2.2) * (1.4 if folder else 1.0)
        n = min(int(source * factor) + 30, int(r.params.max_new_tokens * 0.75))
        text = self._paragraphs(rng, max(n, 5))
        roll = rng.random()
        if roll < 0.15:
            text = text.rstrip(".")  # no terminal punctuation
        elif roll < 0.22:
            words = text.split()
            if len(words) > 24:
                text = text + " " + " ".join(words[:12]) + "."  # a repeated 10-gram
        return text

    @staticmethod
    def _instruction(rng: random.Random) -> str:
        if rng.random() < 0.1:
            return " ok"  # too short: rejected by the word bounds
        n = rng.randint(5, 25)
        words = " ".join(rng.choice(_WORDS) for _ in range(n))
        return f" Write a detailed, multi-section article about {rng.choice(_TOPICS)}, covering {words}.\n"

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
