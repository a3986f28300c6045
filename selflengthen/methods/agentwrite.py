"""AgentWrite (LongWriter, DESIGN §7): self-instruct -> plan -> write step by step -> SFT rows -> train the writer.

One role, the writer: it plans, writes and is trained on (instruction -> whole answer); each round plans and
writes with the previous round's writer adapter (round 1: the base model), unless `plan.adapter` /
`write.adapter` is null (always the base model) or `agentwrite.teacher` names another model that plans and
writes for every round (selflengthen/methods/agentwrite_teacher.py).
"""

from selflengthen.methods import agentwrite_teacher
from selflengthen.methods.base import Method, Stage
from selflengthen.writing.sampling import Sampling
from selflengthen.stages import plan, self_instruct, write, writer_sft
from selflengthen.stages.train import train_stage

ROLES = ("writer",)

METHOD = Method(
    name="agentwrite",
    roles=ROLES,
    stages=(
        Stage(self_instruct.NAME, self_instruct.run, self_instruct.brief,
              config=(("self_instruct", self_instruct.SelfInstruct),)),
        Stage(plan.NAME, plan.run, plan.brief, config=(("plan", plan.Plan), (agentwrite_teacher.KEY, agentwrite_teacher.AgentWrite))),
        Stage(write.NAME, write.run, write.brief,
              config=(("write", write.Write), ("sampling", Sampling), (agentwrite_teacher.KEY, agentwrite_teacher.AgentWrite)),
              lengths="answers.jsonl", label="written"),
        Stage(writer_sft.NAME, writer_sft.run, writer_sft.brief),
        train_stage(writer_sft.NAME),
    ),
    # the teacher's model changes the data; its engine settings are throughput knobs
    semantic_keys=("self_instruct", "plan", "write", "sampling", "agentwrite.teacher.model"),
    pairs=((write.NAME, "answers.jsonl"),),
    answer_role="writer",
)
