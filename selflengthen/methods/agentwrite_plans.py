"""AgentWrite's pure parts (DESIGN §7): read a plan, build the plan and write-step prompts, clean and join steps.

Owns the plan format and nothing that touches an engine or a file; the stages call these functions and keep
the results in their item logs. Templates live in `selflengthen/conf/prompts/<lang>.yaml` under `agentwrite`.

**The plan format.** One line per paragraph:

    Paragraph 1 - Main Point: Introduce the city and its traffic problem. - Word Count: 400 words
    段落1 - 要点：介绍这座城市及其交通问题。 - 字数：400字

Tolerated on a step line: any case and spacing ("paragraph 1 -", "Main point:", "Word count: 300"),
markdown emphasis and list markers (`**Paragraph 1**`, `- Paragraph 1`, `1. Paragraph 1`), dashes or
colons as separators, thousands commas ("1,000 words"), "about 300 words", and a range ("300-400 words",
read as its rounded midpoint). Either language's keywords are accepted whatever the prompt language.
Lines that do not start with a step header ("Here is the plan:", blank lines, a closing remark) are ignored,
since models wrap plans in prose; a line that starts like a step ("Paragraph 3 ...") but does not parse
makes the whole plan unparseable, because silently dropping a step would leave a hole in the answer.

**Numbering.** Steps must be numbered 1, 2, 3, ... in order. A gap, a repeat or a restart is rejected
(`plan_misnumbered`), not renumbered: in practice it means the model wrote the plan twice, or revised it
half-way, and renumbering would glue two plans into one answer that says everything twice.

**Rejection reasons** (stable ids, counted per round), checked in this order:
`plan_empty` (nothing but whitespace), `plan_unparseable` (no step line, or a malformed one),
`plan_misnumbered`, `plan_too_many_steps` (more than `max_steps`), `plan_word_count_out_of_bounds`
(some step's count outside [min_words, max_words]; the original used 200-1000).

**Write steps.** `write_messages` shows the instruction, the whole plan (re-rendered canonically from the
parsed steps, so the model's formatting noise is not carried forward), everything written so far and the
step to write. `clean_step` removes what models echo around a paragraph (its "Paragraph 3:" header, a
"Word count: 310" note, the start of the next paragraph); `join_steps` joins the paragraphs with blank lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

PLAN_REASONS = ("plan_empty", "plan_unparseable", "plan_misnumbered", "plan_too_many_steps",
                "plan_word_count_out_of_bounds")


@dataclass(frozen=True)
class PlanStep:
    """One planned paragraph: its number (1-based), main point and target word count."""

    n: int
    point: str
    words: int


@dataclass(frozen=True)
class PlanResult:
    """Keep (`ok`, with its `steps`), or why not (`reason`, one of PLAN_REASONS; `steps` is then empty)."""

    ok: bool
    reason: str = ""
    steps: tuple[PlanStep, ...] = ()

    @property
    def total_words(self) -> int:
        return sum(s.words for s in self.steps)


# --- parsing ------------------------------------------------------------------------------------------

_DASH = r"[-–—]"
_SEP = r"\s*[:：\-–—]?\s*"  # between a keyword and its value
_HEADER = r"(?:paragraph|para\.?|段落)\s*(?P<n>\d+)"
_HEADER_RE = re.compile(r"^(?:paragraph|para\.?|段落)\s*\d+(?!\d)", re.IGNORECASE)
_NUMBER = r"\d{1,3}(?:,\d{3})+|\d+"
_STEP_RE = re.compile(
    rf"^{_HEADER}\s*(?:[:：.、)]|{_DASH})*\s*"
    rf"(?:main\s*point|要点|主要内容){_SEP}(?P<point>.+?)\s*(?:{_DASH}|[|,，;；])*\s*"
    rf"(?:word\s*count|字数){_SEP}(?:about\s*|approximately\s*|around\s*|约|大约)?"
    rf"(?P<lo>{_NUMBER})(?:\s*(?:{_DASH}|~|to|到|至)\s*(?P<hi>{_NUMBER}))?"
    r"\s*(?:words?|字)?\s*[.。)）]*$",
    re.IGNORECASE,
)
_HAS_ALNUM_RE = re.compile(r"[^\W_]")  # a letter or digit, any script
_LIST_MARK_RE = re.compile(r"^(?:[-*•>#]+\s*|\d+[.)]\s+(?=(?:paragraph|para|段落)))+", re.IGNORECASE)


def _normalise_line(line: str) -> str:
    """A plan line without markdown emphasis and list markers, so the step pattern sees only the content."""
    line = line.replace("**", "").replace("__", "").strip()
    return _LIST_MARK_RE.sub("", line).strip()


def _int(number: str) -> int:
    return int(number.replace(",", ""))


# A step line with a main point and no word count at all (small models drop it): read only with `default_words`.
_POINT_ONLY_RE = re.compile(rf"^{_HEADER}\s*(?:[:：.、)]|{_DASH})*\s*(?:main\s*point|要点|主要内容){_SEP}(?P<point>.+)$",
                            re.IGNORECASE)
_COUNT_WORD_RE = re.compile(r"word\s*count|字数", re.IGNORECASE)


def parse_plan(text: str, max_steps: int = 50, min_words: int = 200, max_words: int = 1000,
               default_words: Optional[int] = None) -> PlanResult:
    """Read a plan (see module docstring) and check it against the bounds; never raises on model output.
    With `default_words`, a step line that has a main point and no word count at all gets that count (a
    line with a malformed count is still unparseable)."""
    if max_steps < 1 or not 0 < min_words <= max_words:
        raise ValueError(f"need max_steps >= 1 and 0 < min_words <= max_words, got {max_steps}, "
                         f"{min_words}, {max_words}")
    if not text or not text.strip():
        return PlanResult(False, "plan_empty")
    steps = []
    for raw in text.splitlines():
        line = _normalise_line(raw)
        if not _HEADER_RE.match(line):
            continue  # prose around the plan
        m = _STEP_RE.match(line)
        if m is None and default_words is not None and not _COUNT_WORD_RE.search(line):
            m = _POINT_ONLY_RE.match(line)
        if m is None:
            return PlanResult(False, "plan_unparseable")
        point = m["point"].strip(" \t-–—:：|")
        if not _HAS_ALNUM_RE.search(point):
            return PlanResult(False, "plan_unparseable")  # a step with no main point
        if "lo" not in m.groupdict():
            words = default_words
        else:
            lo = _int(m["lo"])
            words = lo if m["hi"] is None else round((lo + _int(m["hi"])) / 2)
        steps.append(PlanStep(int(m["n"]), point, words))
    if not steps:
        return PlanResult(False, "plan_unparseable")
    if [s.n for s in steps] != list(range(1, len(steps) + 1)):
        return PlanResult(False, "plan_misnumbered")
    if len(steps) > max_steps:
        return PlanResult(False, "plan_too_many_steps")
    if any(not min_words <= s.words <= max_words for s in steps):
        return PlanResult(False, "plan_word_count_out_of_bounds")
    return PlanResult(True, "", tuple(steps))


# --- prompts ------------------------------------------------------------------------------------------

def _messages(system: Optional[str], user: str) -> list[tuple[str, str]]:
    return ([("system", system)] if system else []) + [("user", user)]


def plan_messages(templates: Mapping, instruction: str, max_steps: int, min_words: int,
                  max_words: int) -> list[tuple[str, str]]:
    """Chat messages asking for a plan; `templates` is the `agentwrite` prompts section. The bounds are
    shown to the model so that what it is asked for and what `parse_plan` accepts agree."""
    user = templates["plan"].format(instruction=instruction, max_steps=max_steps, min_words=min_words,
                                    max_words=max_words)
    return _messages(templates.get("system"), user)


def plan_prefix(templates: Mapping) -> str:
    """The first step's header as the template writes it ("Paragraph 1 - Main Point: "), placed at the start of
    the model's answer (`plan.prefill`) so that a small model continues in the plan format."""
    return templates["step_line"].split("{point}", 1)[0].format(n=1)


def render_plan(templates: Mapping, steps: Sequence[PlanStep]) -> str:
    """The plan as the write prompt shows it: one canonical `step_line` per step."""
    return "\n".join(templates["step_line"].format(n=s.n, point=s.point, words=s.words) for s in steps)


def write_messages(templates: Mapping, instruction: str, plan_steps: Sequence[PlanStep],
                   written_so_far: Sequence[str], step_index: int) -> list[tuple[str, str]]:
    """Chat messages asking for step `step_index` (0-based into `plan_steps`) and nothing else.

    `written_so_far` holds the cleaned texts of the steps before it (joined as in the final answer); when it
    is empty the template's `nothing_written` text stands in for it."""
    if not 0 <= step_index < len(plan_steps):
        raise IndexError(f"step_index {step_index} outside a plan of {len(plan_steps)} steps")
    step = plan_steps[step_index]
    written = join_steps(written_so_far) or templates["nothing_written"]
    user = templates["write"].format(
        instruction=instruction, plan=render_plan(templates, plan_steps), written=written,
        step=render_plan(templates, [step]), words=step.words)
    return _messages(templates.get("system"), user)


# --- cleaning and joining -----------------------------------------------------------------------------

# A heading line that only names a paragraph ("Paragraph 3:", "## Paragraph 3 - Main Point: ...", "段落3：").
_ECHO_HEADER_RE = re.compile(r"^[#*>\s]*(?:paragraph|para\.?|段落)\s*\d+(?!\d)(?:\s*[-–—:：.)、*]|\s*$).*$",
                             re.IGNORECASE)
# A note about the paragraph's length ("Word count: 310", "(字数：300字)").
_WORD_NOTE_RE = re.compile(r"^[(\[（*\s]*(?:word\s*count|字数)\s*[:：]?\s*(?:about\s*|约)?\d[\d,]*\s*(?:words?|字)?"
                           r"[)\]）*.\s。]*$", re.IGNORECASE)


def clean_step(text: str) -> str:
    """The paragraph a write call returned, without echoed headers or length notes around it, and cut
    before any later paragraph header (the model was asked for this step only)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    while lines and (not lines[0].strip() or _ECHO_HEADER_RE.match(lines[0]) or _WORD_NOTE_RE.match(lines[0])):
        lines.pop(0)
    for i, line in enumerate(lines):
        if _ECHO_HEADER_RE.match(line):  # the model went on to the next step
            lines = lines[:i]
            break
    while lines and (not lines[-1].strip() or _WORD_NOTE_RE.match(lines[-1])):
        lines.pop()
    return "\n".join(lines).strip()


def join_steps(texts: Sequence[str]) -> str:
    """The whole answer: the non-empty steps, stripped, separated by one blank line."""
    return "\n\n".join(t.strip() for t in texts if t and t.strip())
