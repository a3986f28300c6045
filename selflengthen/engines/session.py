"""The engine's lifecycle for a run: created once, loaded only when something must be generated, given
back before training, closed at the end — and the model path resolved (the embedded model converted)
only then. Entry points (run, eval, collect) and the recipe share it; stages only call generate/stream.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Optional

from selflengthen.engines.base import Completion, RequestQueue


class LazyEngine:
    """Creates and loads the real engine on first use, so a resumed run whose generation is already done
    never pays for loading a model; remembers the adapters to apply once it is loaded."""

    def __init__(self, engine_cfg: dict, model_path: Callable[[], str]):
        self.cfg, self._model_path = engine_cfg, model_path
        self.inner = None
        self.adapters: dict = {}
        self.load_seconds = 0.0
        self.generate_seconds = 0.0  # inside the engine's generate()/stream(), loading excluded

    def set_adapters(self, adapters: dict) -> None:
        self.adapters = dict(adapters)
        if self.inner is not None:
            self.inner.set_adapters(self.adapters)

    def _ensure(self):
        if self.inner is None:
            from selflengthen.engines import make_engine

            start = time.time()
            self.inner = make_engine(self.cfg, self._model_path())
            self.inner.load()
            self.inner.set_adapters(self.adapters)
            self.load_seconds += time.time() - start
        return self.inner

    def generate(self, requests, progress=None):
        if not requests:
            return []
        engine = self._ensure()
        start = time.time()
        try:
            return engine.generate(requests, progress)
        finally:
            self.generate_seconds += time.time() - start

    def stream(self, queue: RequestQueue) -> Iterator[Completion]:
        """The engine's stream; time spent inside the engine (not in the consumer) counts as generate time."""
        if not queue:
            return
        engine = self._ensure()
        it = iter(engine.stream(queue))
        while True:
            start = time.time()
            try:
                item = next(it)
            except StopIteration:
                self.generate_seconds += time.time() - start
                return
            self.generate_seconds += time.time() - start
            yield item

    @property
    def capacity(self):
        """The loaded engine's `capacity` (stages.common.engine_capacity); None if it states none or is not
        loaded yet — asking never loads a model."""
        return getattr(self.inner, "capacity", None) if self.inner is not None else None

    def release(self) -> None:
        if self.inner is not None:
            self.inner.release()

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None


def model_resolver(model_path: str, cache_dir: Optional[str]) -> Callable[[], str]:
    """A function that resolves the model path on first call (converting the embedded model once)."""
    cache: dict = {}

    def resolve() -> str:
        if "path" not in cache:
            from selflengthen.engines.models import resolve_model_path

            cache["path"] = resolve_model_path(model_path, cache_dir)
        return cache["path"]
    return resolve


def for_settings(s) -> tuple[LazyEngine, Callable[[], str]]:
    """(lazy engine, model path resolver) for a run's settings."""
    resolve = model_resolver(s.model_path, s.model_cache)
    return LazyEngine(s.engine, resolve), resolve
