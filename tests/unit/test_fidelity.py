"""The reference values docs/fidelity.md calls SAME, checked on the default config as a user gets it.

Every value is composed through Hydra (conftest.compose, the CLI's own config path) and read back through
`Settings.from_config`, the one place the run reads its config, so a default that drifts from the published
code (QwenLM/Self-Lengthen, THUDM/LongWriter) fails here. The expected values are copied from those
repositories (file and line in docs/fidelity.md), not from our YAML.
"""

from __future__ import annotations

import pytest

from conftest import compose
from selflengthen.writing.length_control import Constraint, length_score, s_l
from selflengthen.settings import Settings

# llama/llm_client.py get_response / get_completion
STOPS = ["\n\n---", "\n\n\n", "\n---", "---"]
# llama/prompt_templates/extend_response.md and qwen/..., with {prompt} -> {instruction}, {response} -> {text}
EXTEND = {
    "en": "You are an expert in writing polishing. Based on the provided instruction and original outline, enhance "
          "the content by carefully expanding the original outline to increase its informational content, incorporate "
          "specific details, and improve its descriptive quality. Remember that your task is not to continue writing "
          "content, but to enrich the current content. You can achieve this by enriching existing paragraphs with more "
          "detailed descriptions or creating new sections. You should try to be creative and informative as much as "
          "posible and do NOT include any repetitive content or lengthy narratives in your response. You need to "
          "generate text that is as long, rich, and engaging as possible.\n\nInstruction: {instruction}\n\n"
          "Original outline:\n\n{text}",
    "zh": "根据提供的指令和原始大纲，通过仔细扩展原始大纲来增强内容，增加信息，纳入细节，并提高其描述质量。记住，你的任务不是续写内容，"
          "而是丰富当前的内容。你可以通过更详细的描述丰富已有段落或创建子标题来实现这一点。记住，不要在你的回复中包含冗长的叙述或任何重复的内容。"
          "\n\n指令：{instruction}\n\n原始大纲：\n\n{text}",
}
# */prompt_templates/self_instruct.md (the user turn and the assistant's opening) and judge_prompt.md
TASK = {"en": "Your task is to construct user instructions that can guide the generation of long text.",
        "zh": "你的任务是构造一些可以引导长文本生成的用户指令，注意指令应该是完整结束的。"}
LISTING = {"en": "Instruction 1: {ins1}\nInstruction 2: {ins2}\nInstruction 3: ", "zh": "指令1：{ins1}\n指令2：{ins2}\n指令3："}
FOURTH = {"en": "\nInstruction 4", "zh": "\n指令4"}
JUDGE = {"en": "Given an instruction, please determine if it is suitable for guiding the generation of a long article "
               "(e.g., larger than 2000 words). Return only a yes or no as your response.\n\n<Instruction>\n"
               "{instruction}\n</Instruction>",
         "zh": "给定一条用户的指令，请判断它是否适合指导长篇文章（比如，大于2000字）的生成。只返回“是”或“否”作为你的回答。\n\n<指令>\n"
               "{instruction}\n</指令>"}
# utils.check_response's punctuation_marks (the one-character ones: its "..." never matches response[-1])
TERMINAL = {"en": set(".!?,;:-\"')]}>`"), "zh": set("。！？”)]}>）】’…`")}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return {lang: Settings.from_config(compose(f"prompts={lang}"), tmp_path_factory.mktemp(lang)) for lang in ("en", "zh")}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_prompts_are_the_papers(settings, lang):
    p = settings[lang].prompts
    si = p["self_instruct"]
    assert (si["task"], si["fewshot"], si["judge"]) == (TASK[lang], LISTING[lang], JUDGE[lang])
    assert si["stop"] == ["\n\n---", "\n\n\n", "\n---", "---", FOURTH[lang]]
    assert p["generate"]["stop"] == STOPS and p["extend"]["stop"] == STOPS
    assert p["extend"]["stage1"] == p["extend"]["stage2"] == EXTEND[lang]  # one template, the extender's rows too
    flt = p["filter"]
    assert TERMINAL[lang] <= set(flt["terminal"])
    assert (flt["meta_head_lines"], flt["meta_tail_lines"], flt["meta_match"]) == (2, 3, "substring")
    if lang == "en":
        assert flt["meta_words"] == ["revised", "revision", "response", "version", "paragraph"]
        assert (flt["ngram"], flt["ngram_unit"]) == (10, "word")
        assert not set(flt["terminal"]) & set("*#|")
    else:
        assert flt["meta_words"] == [] and flt["ngram"] == 13
        assert not set(flt["terminal"]) & set(".!?\"'")  # the paper's Chinese set has no ASCII sentence marks


def test_generation_settings_are_the_papers(settings):
    s = settings["en"]
    d = s.decoding
    assert (d.temperature, d.top_p, d.top_k, d.repetition_penalty) == (0.7, 0.8, 20, 1.1)
    si, gen, ext = s.section("self_instruct"), s.section("generate"), s.section("extend")
    assert (si.min_words, si.max_words, si.adapter, si.first_line) == (3, 500, None, False)
    assert (gen.samples, gen.max_attempts, gen.repair) == (2, 20, False)
    assert (ext.samples, ext.passes, ext.min_growth, ext.max_attempts, ext.repair) == (2, 3, 1.2, 20, False)
    # no aid that moves a text's end: nothing trims a budget-cut answer or forbids the end token
    assert not any(hasattr(x, k) for x in (gen, ext) for k in ("trim_to_sentence", "force_growth"))
    sampling = s.section("sampling")
    assert (sampling.a, sampling.p) == (2.0, 3.0)
    assert s.section("sft").drop_lines == 0.2


def test_training_settings_are_the_papers(settings):
    t = settings["en"].train
    assert (t.lora_r, t.lora_alpha, t.lora_dropout, t.target_modules) == (8, 16, 0.0, "all-linear")
    assert (t.lr, t.epochs, t.scheduler, t.warmup_ratio, t.max_length) == (1e-4, 4, "cosine", 0.1, 16384)


def test_final_data_is_the_papers(settings):
    c = settings["en"].collect
    assert (c.min_words, c.max_words, c.sample_answers) == (2000, 8000, True)
    assert c.kinds == {"about": 0.40, "range": 0.25, "above": 0.10, "below": 0.25}


def test_paper_preset_budgets_are_the_papers(tmp_path):
    s = Settings.from_config(compose("experiment=paper"), tmp_path)
    assert s.section("generate").max_new_tokens == s.section("extend").max_new_tokens == 16384
    assert s.collect.max_new_tokens == 16384 and s.train.max_length == 16384


def test_eval_is_longbench_writes(settings):
    d = settings["en"].eval.decoding
    assert (d.temperature, d.top_p, d.top_k, d.repetition_penalty) == (0.5, 1.0, 50, 1.0)
    # LonGen's bands and score (eval/length_following_eval.py), LongBench-Write's S_l (evaluation/eval_length.py)
    assert Constraint("about", target=1000).band() == (800, 1200)
    assert Constraint("above", target=1000).band() == (1000, 1500)
    assert Constraint("below", target=1000).band() == (500, 1000)
    assert length_score(Constraint("about", target=1000), 600) == pytest.approx(600 / 800 * 2 - 1)
    assert length_score(Constraint("about", target=1000), 1500) == pytest.approx(3 - 1500 / 1200 * 2)
    assert s_l(1000, 1600) == pytest.approx(100 * (1 - 0.6 / 3)) and s_l(1000, 800) == pytest.approx(100 * (1 - 0.25 / 2))


def test_agentwrite_is_longwriters(tmp_path):
    s = Settings.from_config(compose("method=agentwrite"), tmp_path)
    plan = s.section("plan")
    assert (plan.min_words, plan.max_words, plan.max_steps) == (200, 1000, 50)
    assert "As this is an ongoing work, omit open-ended conclusions or other rhetorical hooks." in \
        s.prompts["agentwrite"]["write"]
