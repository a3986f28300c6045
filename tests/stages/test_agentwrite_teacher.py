"""agentwrite.teacher: plan and write go to a second engine for the teacher model, without an adapter; the
student's engine gets no request (and gives its memory back first); the teacher is closed after each stage."""

from __future__ import annotations

from conftest import fake_settings
from selflengthen import engines
from selflengthen.engines.fake import FakeEngine
from selflengthen.methods.base import load_method
from selflengthen.stages import plan, write
from selflengthen.stages.common import RoundContext
from selflengthen.runfolder.store import atomic_write_jsonl, read_jsonl

TEACHER = "agentwrite.teacher={model: teacher-model, engine: {name: fake, seed: 5}}"


class Student:
    """The round's engine: must not be asked for anything while a teacher plans and writes."""

    def __init__(self):
        self.released = 0

    def generate(self, requests, progress=None):
        raise AssertionError(f"the student got {len(requests)} request(s)")

    def stream(self, queue):
        raise AssertionError("the student got a stream")

    def release(self):
        self.released += 1


class Teacher(FakeEngine):
    made: list = []

    def __init__(self, model_path, **kw):
        super().__init__(model_path, **kw)
        self.requests, self.closed = [], False
        Teacher.made.append(self)

    def _finish(self, r):
        self.requests.append(r)
        return super()._finish(r)

    def close(self):
        self.closed = True


def test_teacher_plans_and_writes_without_adapter(tmp_path, monkeypatch):
    Teacher.made = []
    monkeypatch.setattr(engines, "make_engine", lambda cfg, path: Teacher(path, **{k: v for k, v in cfg.items()
                                                                                  if k != "name"}))
    s = fake_settings(tmp_path / "run", "method=agentwrite", TEACHER)
    student = Student()
    ctx = RoundContext(s, 2, student, {"writer": str(tmp_path / "adapter")}, method=load_method("agentwrite"))
    atomic_write_jsonl(ctx.stage_dir("self_instruct") / "instructions.jsonl",
                       [{"id": f"i{k:04d}", "prompt": f"Write a long essay about topic {k}."} for k in range(4)])
    p = plan.run(ctx)
    w = write.run(ctx)
    assert p["planned"] > 0 and w["written"] > 0
    assert len(Teacher.made) == 2 and all(t.closed for t in Teacher.made)  # one per stage, closed after it
    planner, writer = Teacher.made
    assert planner.model_path == writer.model_path == "teacher-model" and planner.seed == 5
    assert {r.id.split("@")[0] for r in writer.requests} <= {r.id for r in planner.requests}
    assert all(r.adapter is None for t in Teacher.made for r in t.requests)  # the writer's LoRA is the student's
    assert len(planner.requests) == p["plans_drawn"] and len(writer.requests) == w["step_generations"]
    assert student.released == 2
    assert read_jsonl(ctx.stage_dir("write") / "answers.jsonl")


def test_without_teacher_the_round_engine_and_the_writer_adapter_are_used(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "make_engine", lambda cfg, path: (_ for _ in ()).throw(AssertionError("no teacher")))
    s = fake_settings(tmp_path / "run", "method=agentwrite")
    engine = Teacher("student")
    ctx = RoundContext(s, 1, engine, {"writer": None}, method=load_method("agentwrite"))
    atomic_write_jsonl(ctx.stage_dir("self_instruct") / "instructions.jsonl",
                       [{"id": "i0000", "prompt": "Write a long essay about rivers."}])
    plan.run(ctx)
    write.run(ctx)
    assert engine.requests and {r.adapter for r in engine.requests} == {"writer"}


def test_teacher_settings_are_checked(tmp_path):
    import pytest

    from selflengthen.support.checks import ConfigError

    with pytest.raises(ConfigError, match="agentwrite.teacher.model"):
        fake_settings(tmp_path, "method=agentwrite", "agentwrite.teacher={engine: {name: fake}}")
    with pytest.raises(ConfigError, match="agentwrite.teacher.engine"):
        fake_settings(tmp_path, "method=agentwrite", "agentwrite.teacher={model: m, engine: {seed: 1}}")
    s = fake_settings(tmp_path, "method=agentwrite", "agentwrite.teacher={model: m}")
    assert s.semantic["agentwrite.teacher.model"] == "m"  # a different teacher is drift; its engine is not
