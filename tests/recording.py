"""A recording engine and trainer for the e2e wiring tests: the fakes, plus a log of every call.

The fake engine and fake trainer make outputs look right whether or not round r+1 really builds on round r;
these wrappers keep what each stage asked for, so a test can check the wiring itself: which adapters the
engine held when a request ran, what a trainer started from, what stage 2 was given as its prefix.

- `RecordingEngine` stands where the recipe's `LazyEngine` stands (same attributes). It records
  `("round", r)` when `watch_rounds` is on and a round starts, `("set_adapters", {role: folder})`, and one
  `("request", Call)` per generation with the adapter folder the request resolved to at that moment.
- `RecordingTrainer` wraps a trainer function and records one `TrainCall` per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from selflengthen.engines.fake import FakeEngine


@dataclass(frozen=True)
class Call:
    """One generation as the engine saw it."""

    id: str
    adapter: Optional[str]  # the adapter name the request asked for
    folder: Optional[str]  # the folder that name resolved to when the request ran (None = base model)
    prefix: str  # assistant_prefix (stage 2 of extension)
    messages: Optional[tuple]
    prompt: Optional[str]
    seed: Optional[int]
    text: str  # what the engine answered


class RecordingEngine(FakeEngine):
    """The fake engine with a log; usable where the recipe expects a LazyEngine."""

    def __init__(self, **settings):
        super().__init__("fake-model", **settings)
        self.events: list[tuple[str, object]] = []
        self.folders: dict[str, Optional[str]] = {}
        self.inner = self  # LazyEngine's "was an engine made" attribute
        self.load_seconds = self.generate_seconds = 0.0

    def set_adapters(self, adapters: dict) -> None:
        self.folders = {k: (str(v) if v else None) for k, v in adapters.items()}
        self.events.append(("set_adapters", dict(self.folders)))
        super().set_adapters(adapters)

    def _one(self, r) -> str:
        text = self._answer(r)
        self.events.append(("request", Call(r.id, r.adapter, self.folders.get(r.adapter) if r.adapter else None,
                                            r.assistant_prefix, r.messages, r.prompt, r.params.seed, text)))
        return text

    def _answer(self, r) -> str:
        """The text of one request; a scripted subclass overrides this."""
        return super()._one(r)

    def close(self) -> None:  # the recipe closes its engine at the end: keep the log readable
        pass

    # --- reading the log ---------------------------------------------------------------------------------

    def calls(self, round_no: Optional[int] = None) -> list[Call]:
        """Every request (of round `round_no` only, when `watch_rounds` recorded the rounds)."""
        out, current = [], None
        for kind, value in self.events:
            if kind == "round":
                current = value
            elif kind == "request" and (round_no is None or current == round_no):
                out.append(value)
        return out

    def adapters_set(self, round_no: int) -> list[dict]:
        """The set_adapters calls made during round `round_no`, in order."""
        out, current = [], None
        for kind, value in self.events:
            if kind == "round":
                current = value
            elif kind == "set_adapters" and current == round_no:
                out.append(value)
        return out


def watch_rounds(monkeypatch, engine: RecordingEngine) -> None:
    """Record ("round", r) in the engine's log as each round starts (wraps recipe.run_round, unchanged)."""
    from selflengthen import recipe

    real = recipe.run_round

    def run_round(ctx):
        engine.events.append(("round", ctx.round_no))
        return real(ctx)

    monkeypatch.setattr(recipe, "run_round", run_round)


@dataclass(frozen=True)
class TrainCall:
    role: str  # the out_dir's name: train/<role>
    round_no: Optional[int]  # from the out_dir's round folder (None for final/)
    init_adapter: Optional[str]
    rows: int
    out_dir: str


class RecordingTrainer:
    """A trainer function (default: the fake one) that records every call."""

    def __init__(self, inner: Optional[Callable] = None):
        from selflengthen.training.fake import fake_train_lora

        self.inner = inner or fake_train_lora
        self.calls: list[TrainCall] = []

    def __call__(self, model_path, rows, out_dir, init_adapter, cfg=None, progress=None):
        out = Path(out_dir)
        round_part = next((p for p in out.parts if p.startswith("round_")), None)
        self.calls.append(TrainCall(out.name, int(round_part[6:]) if round_part else None,
                                    str(init_adapter) if init_adapter else None, len(rows), str(out)))
        return self.inner(model_path, rows, out_dir, init_adapter, cfg, progress=progress)


def use_trainer(monkeypatch, trainer: RecordingTrainer) -> None:
    """Make the recipe's `trainer_for(backend)` return `trainer`."""
    import selflengthen.training as training

    monkeypatch.setattr(training, "trainer_for", lambda backend: trainer)
