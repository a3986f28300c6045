"""AgentWrite's optional teacher (DESIGN §7): plan and write with another model than the one trained.

`agentwrite.teacher` is null (the default: the trained writer plans and writes, round 1 the base model) or
`{model: <path>, engine: {...}}` — any model the engines serve, with its own engine settings (missing
`engine` = the run's `engine:` section). When set, the plan and write stages send their requests to a
second engine for the teacher, without an adapter (the writer's LoRA belongs to the student), and the
student's engine gives its memory back first.

Each stage opens the teacher lazily and closes it when the stage ends, so a resumed stage that has nothing
left to generate never loads it, and nothing of the teacher stays resident while the writer trains. (Plan
and write each load it once per round: simple, and small next to writing every step.)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from selflengthen.support.checks import ConfigError, need

KEY = "agentwrite"


@dataclass(frozen=True)
class AgentWrite:
    """`agentwrite:` — who plans and writes: null = the trained writer, or {model, engine} = a teacher."""

    teacher: Optional[dict] = None

    def check(self) -> None:
        if self.teacher is None:
            return
        fix = "use agentwrite.teacher=null (the trained model) or {model: <path>, engine: {name: transformers}}"
        unknown = sorted(set(self.teacher) - {"model", "engine"})
        need(not unknown, f"agentwrite.teacher.{unknown[0] if unknown else ''}", None, "is not a known key", fix)
        model = self.teacher.get("model")
        need(isinstance(model, str) and model.strip() != "", "agentwrite.teacher.model", model,
             "must name a model (a Hugging Face id, a local folder or embedded:smollm2-135m)", fix)
        engine = self.teacher.get("engine")
        need(engine is None or isinstance(engine, dict) and isinstance(engine.get("name"), str),
             "agentwrite.teacher.engine", engine,
             "must be a mapping of engine settings with its name (or null for the run's engine:)", fix)
        if engine is not None:
            from selflengthen.engines import parse_config

            try:
                parse_config(engine)
            except ConfigError as exc:  # name the teacher's key, not the run's engine
                raise ConfigError(str(exc).replace("engine.", "agentwrite.teacher.engine.")) from exc


def engine_settings(s, teacher: dict) -> dict:
    """The teacher's checked engine settings: its own, else the run's (same engine, the teacher's model)."""
    from selflengthen.engines import parse_config

    own = teacher.get("engine")
    return s.engine if own is None else parse_config(own)


@contextmanager
def planner(ctx, adapter: Optional[str]) -> Iterator[tuple[object, Optional[str]]]:
    """(engine, adapter) for a plan or write stage: the round's engine and the stage's adapter, or a teacher
    engine (opened for the stage, closed after it) and no adapter."""
    section = ctx.s.sections.get(KEY)
    teacher = section.teacher if section is not None else None
    if teacher is None:
        yield ctx.engine, adapter
        return
    from selflengthen.engines import session

    ctx.engine.release()  # the student may be resident (self-instruct): give its memory back first
    engine = session.LazyEngine(engine_settings(ctx.s, teacher),
                                       session.model_resolver(teacher["model"], ctx.s.model_cache))
    try:
        yield engine, None
    finally:
        engine.close()
