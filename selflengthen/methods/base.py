"""What a method is: its adapter roles, its ordered stages, and what it tells the rest of the package.

A method is a module `selflengthen/methods/<name>.py` (or any importable module, for tests) holding a
`METHOD = Method(...)`. The recipe runs `METHOD.stages` in order for every round, then
`METHOD.final_stages` once after the last round; nothing else in the package knows which stages exist.
Each stage returns its own summary section; the round summary, the round table and the report are
assembled from those sections (`Stage.brief` is its line in the tables).

`config` sections are parsed and checked at start-up by settings.py from the dataclasses the stages
declare, so a new stage's settings need no edit to settings.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional


def _no_brief(section: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in section.items() if isinstance(v, (int, str)) and k != "seconds")


@dataclass(frozen=True)
class Stage:
    """One step of a round. `name` is its folder (`round_NNN/<name>/`) and the key of its summary section."""

    name: str
    run: Callable[[Any], dict]  # RoundContext -> the stage's summary section (resumable: see stages.common)
    brief: Callable[[dict], str] = _no_brief  # one line for the round table and the report
    config: tuple[tuple[str, type], ...] = ()  # (config key, dataclass) sections the stage reads
    lengths: Optional[str] = None  # an artifact whose rows carry "words": drawn in the lengths plot
    label: str = ""  # the plot's legend entry for `lengths` (default: the stage name)
    # may start before the previous stage ends: ctx -> (a row of the previous stage -> this stage's items for
    # it), or None when it cannot (stages.common.Handover; used with run.speculate on a continuous batcher)
    ahead: Optional[Callable[[Any], Any]] = None


@dataclass(frozen=True)
class Method:
    name: str
    roles: tuple[str, ...]  # adapter names it trains; round 1 generates with none of them
    stages: tuple[Stage, ...]
    # config keys (besides model, seed, prompts, data, decoding, train) that change what it produces: drift
    semantic_keys: tuple[str, ...] = ()
    # (stage, artifact) entries whose rows hold the round's kept (instruction, answer) pairs: collect exports them
    # (Self-Lengthen: the initial and the extended answers, as the paper's collect_data.py does); one bare
    # (stage, artifact) is read as a single entry
    pairs: tuple = ()
    # the adapter the held-out eval and collect answer with
    answer_role: str = "generator"
    final_stages: tuple[Stage, ...] = ()  # after the last round (e.g. the final model), in `final/`

    def config_sections(self) -> dict[str, type]:
        out: dict[str, type] = {}
        for stage in self.stages + self.final_stages:
            for key, cls in stage.config:
                out.setdefault(key, cls)
        return out

    def pair_sources(self) -> tuple[tuple[str, str], ...]:
        """`pairs` as a tuple of (stage, artifact), whichever way it was written."""
        if len(self.pairs) == 2 and all(isinstance(x, str) for x in self.pairs):
            return (tuple(self.pairs),)
        return tuple(tuple(p) for p in self.pairs)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages + self.final_stages if s.name == name)


def load_method(name: str) -> Method:
    """The method `name`: `selflengthen.methods.<name>`, or a dotted module path holding `METHOD`."""
    module = name if "." in name else f"selflengthen.methods.{name}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name not in (module, module.rsplit(".", 1)[0]):
            raise
        raise ValueError(f"no method named {name!r} (looked for the module {module})") from exc
    method = getattr(mod, "METHOD", None)
    if not isinstance(method, Method):
        raise ValueError(f"{module} has no METHOD = Method(...)")
    return method


def method_of(run_dir) -> Method:
    """The method a run folder was made with (its manifest); Self-Lengthen for runs that predate methods."""
    from selflengthen.runfolder import manifest

    m = manifest.load(run_dir) or {}
    return load_method(m.get("method") or "selflengthen")
