"""Shipped content: prompts YAMLs (keys, comments, placeholders) and the seed / eval JSONL files."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from selflengthen.writing.length_control import KINDS, Constraint, kind_of_phrase

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "selflengthen" / "conf" / "prompts"
DATA = ROOT / "selflengthen" / "data"
LANGS = ("en", "zh")
CATEGORIES = {"literature", "academic", "business", "journalism", "professional", "personal", "technical"}

# Every templated key and the exact placeholders the code fills in.
PLACEHOLDERS = {
    ("self_instruct", "fewshot"): {"ins1", "ins2"},
    ("self_instruct", "judge"): {"instruction"},
    ("generate", "user"): {"instruction"},
    ("extend", "stage1"): {"instruction", "text"},
    ("extend", "stage2"): {"instruction", "text"},
    ("length_control", "join"): {"query", "constraint"},
    ("length_control", "rewrite"): {"query", "constraint"},
}
REQUIRED = {
    "": {"lang", "seed_file", "eval_file", "self_instruct", "generate", "extend", "filter", "length_control"},
    "self_instruct": {"fewshot", "stop", "judge", "judge_yes"},
    "generate": {"system", "user"},
    "extend": {"system", "stage1", "stage2"},
    "filter": {"terminal", "ngram", "ngram_unit", "meta_words", "meta_head_lines", "meta_tail_lines"},
    "length_control": {"about", "range", "above", "below", "join", "rewrite"},
}
# Seeds: words per instruction (en: whitespace tokens; zh: CJK characters + ASCII tokens).
SEED_WORDS = {"en": (10, 60), "zh": (15, 120)}
SEED_MIN = {"en": 44, "zh": 22}
EVAL_MIN = {"en": (24, 5), "zh": (12, 3)}            # rows, rows per kind
EVAL_NUMBERS = {"en": (50, 700), "zh": (100, 900)}    # allowed target / low / high

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def _words(text: str) -> int:
    """DESIGN §3 counting: each CJK character is one word, whitespace tokens of the rest are words."""
    return len(_CJK.findall(text)) + len(_CJK.sub(" ", text).split())


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _prompts(lang: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(PROMPTS / f"{lang}.yaml"))


def _rows(name: str) -> list[dict]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# --- prompts YAML -------------------------------------------------------------------------------------

def test_every_prompts_file_is_checked():
    assert {p.stem for p in PROMPTS.glob("*.yaml")} == set(LANGS)


@pytest.mark.parametrize("lang", LANGS)
def test_prompts_have_all_required_keys(lang):
    cfg = _prompts(lang)
    for section, keys in REQUIRED.items():
        node = cfg[section] if section else cfg
        assert keys <= set(node), f"{lang}: {section or 'top'} lacks {keys - set(node)}"
    assert cfg["lang"] == lang
    assert (DATA / cfg["seed_file"]).is_file() and (DATA / cfg["eval_file"]).is_file()


@pytest.mark.parametrize("lang", LANGS)
def test_templates_use_exactly_the_documented_placeholders(lang):
    cfg = _prompts(lang)
    for (section, key), names in PLACEHOLDERS.items():
        template = cfg[section][key]
        assert _fields(template) == names, f"{lang}: {section}.{key}"
        template.format(**{n: "x" for n in names})
    for section in ("generate", "extend"):
        system = cfg[section]["system"]
        assert system is None or (isinstance(system, str) and not _fields(system))
    for kind in KINDS:
        phrasings = cfg["length_control"][kind]
        assert len(phrasings) >= 5 and len(set(phrasings)) == len(phrasings), f"{lang}: {kind}"
        names = {"low", "high"} if kind == "range" else {"n"}
        for template in phrasings:
            assert _fields(template) == names, template
            template.format(n=300, low=200, high=400)


@pytest.mark.parametrize("lang", LANGS)
def test_phrasings_read_as_their_kind(lang):
    lc = _prompts(lang)["length_control"]
    for kind in KINDS:
        for template in lc[kind]:
            assert kind_of_phrase(template, lang) == kind, template


@pytest.mark.parametrize("lang", LANGS)
def test_scalar_settings_are_sane(lang):
    cfg = _prompts(lang)
    si, flt = cfg["self_instruct"], cfg["filter"]
    assert si["stop"] and all(isinstance(s, str) and s for s in si["stop"])
    assert si["judge_yes"] and all(y == y.strip().lower() for y in si["judge_yes"])
    assert isinstance(flt["terminal"], str) and flt["terminal"]
    assert isinstance(flt["ngram"], int) and flt["ngram"] > 1
    assert flt["ngram_unit"] in {"word", "zh"}
    assert isinstance(flt["meta_words"], list)
    assert flt["meta_head_lines"] >= 0 and flt["meta_tail_lines"] >= 0


@pytest.mark.parametrize("lang", LANGS)
def test_every_yaml_key_has_a_comment(lang):
    """STYLE: every key a user may change says what it does, inline or on the line above."""
    lines = (PROMPTS / f"{lang}.yaml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_]\w*:", line):
            above = lines[i - 1].strip() if i else ""
            assert "#" in line.split(":", 1)[1] or above.startswith("#"), f"{lang}.yaml:{i + 1}: {line}"


# --- seeds --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", LANGS)
def test_seeds_parse_and_cover_the_categories(lang):
    rows = _rows(f"seeds_{lang}.jsonl")
    assert len(rows) >= SEED_MIN[lang]
    lo, hi = SEED_WORDS[lang]
    for row in rows:
        assert set(row) == {"prompt", "category"}, row
        assert row["category"] in CATEGORIES, row
        assert lo <= _words(row["prompt"]) <= hi, row["prompt"]
        cjk = len(_CJK.findall(row["prompt"]))
        assert (cjk > len(row["prompt"]) / 2) if lang == "zh" else cjk == 0, row["prompt"]
    per_category = {c: sum(r["category"] == c for r in rows) for c in CATEGORIES}
    assert min(per_category.values()) >= SEED_MIN[lang] // 7 - 1, per_category
    assert len({_norm(r["prompt"]) for r in rows}) == len(rows), "duplicate seeds"


# --- eval ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", LANGS)
def test_eval_rows_are_valid_constraints(lang):
    rows = _rows(f"eval_{lang}.jsonl")
    n_rows, per_kind = EVAL_MIN[lang]
    assert len(rows) >= n_rows
    assert min(sum(r["type"] == k for r in rows) for k in KINDS) >= per_kind
    lo, hi = EVAL_NUMBERS[lang]
    for row in rows:
        numbers = {"low", "high"} if row["type"] == "range" else {"target"}
        assert set(row) == {"prompt", "type"} | numbers, row
        c = Constraint.from_dict(row)
        assert {"prompt": row["prompt"], **c.to_dict()} == row
        for key in numbers:
            assert isinstance(row[key], int) and lo <= row[key] <= hi, row
            assert str(row[key]) in row["prompt"], f"{key} not phrased into: {row['prompt']}"
        assert kind_of_phrase(row["prompt"], lang) == row["type"], row["prompt"]
    values = [v for r in rows for k, v in r.items() if k in ("target", "low", "high")]
    assert max(values) - min(values) >= (hi - lo) * 0.6, "targets should spread over the allowed span"
    assert len({_norm(r["prompt"]) for r in rows}) == len(rows), "duplicate eval prompts"


def test_eval_prompts_are_held_out_from_seeds():
    seeds = {_norm(r["prompt"]) for lang in LANGS for r in _rows(f"seeds_{lang}.jsonl")}
    for lang in LANGS:
        for row in _rows(f"eval_{lang}.jsonl"):
            prompt = _norm(row["prompt"])
            assert prompt not in seeds
            assert not any(prompt in s or s in prompt for s in seeds), row["prompt"]
