"""LongWriter-Zero (DESIGN §7): long writing learnt by reinforcement learning, with no SFT data.

Each round: self-instruct grows the instruction pool (as in Self-Lengthen); rl_prompts draws the round's
prompts from it with length constraints and target ranges; train runs the run's trainer on them, which for
this method is GRPO (`selflengthen/conf/method/lwzero.yaml` selects `train: grpo`): groups of sampled answers per prompt,
length, format and repetition rewards (and a quality model if given), LoRA through peft. The generator
continues from its adapter of the previous round; round 1 starts from the base model.
"""

from selflengthen.methods.base import Method, Stage
from selflengthen.stages import rl_prompts, self_instruct
from selflengthen.stages.train import train_stage

METHOD = Method(
    name="lwzero",
    roles=("generator",),
    stages=(
        Stage(self_instruct.NAME, self_instruct.run, self_instruct.brief,
              config=(("self_instruct", self_instruct.SelfInstruct),)),
        Stage(rl_prompts.NAME, rl_prompts.run, rl_prompts.brief, config=((rl_prompts.NAME, rl_prompts.RlPrompts),)),
        train_stage(rl_prompts.NAME),
    ),
    semantic_keys=("self_instruct", "rl_prompts"),
    answer_role="generator",
)
