"""Self-Lengthen (DESIGN §1): self-instruct -> initial -> two-stage extension -> SFT data -> train both roles.

The generator answers, the extender lengthens; both are the base model plus their own LoRA adapter, each
continuing from its adapter of the previous round.
"""

from selflengthen.methods.base import Method, Stage
from selflengthen.writing.sampling import Sampling
from selflengthen.stages import extend, final, initial, rl, self_instruct, sft_data
from selflengthen.stages.train import train_stage

ROLES = ("generator", "extender")

METHOD = Method(
    name="selflengthen",
    roles=ROLES,
    stages=(
        Stage(self_instruct.NAME, self_instruct.run, self_instruct.brief,
              config=(("self_instruct", self_instruct.SelfInstruct),)),
        Stage(initial.NAME, initial.run, initial.brief, config=(("generate", initial.Generate), ("sampling", Sampling)),
              lengths="responses.jsonl", label="initial"),
        Stage(extend.NAME, extend.run, extend.brief, config=(("extend", extend.Extend), ("sampling", Sampling)),
              lengths="extended.jsonl", label="extended", ahead=extend.ahead),
        Stage(sft_data.NAME, sft_data.run, sft_data.brief, config=(("sft", sft_data.Sft),)),
        train_stage(sft_data.NAME),
    ),
    semantic_keys=("self_instruct", "generate", "extend", "sampling", "sft"),
    # the final data: every round's kept initial and extended answers (the paper's collect_data.py takes both),
    # so the length-controlled queries span short and long answers, often to the same instruction
    pairs=((initial.NAME, "responses.jsonl"), (extend.NAME, "extended.jsonl")),
    answer_role="generator",
    # after the last round, each switched on by its own section: final.enabled (SFT on the collected,
    # length-controlled pairs, merged) and rl.enabled (LongWriter-Zero's GRPO from the last generator)
    final_stages=final.stages() + rl.stages(),
)
