"""WISE (world-knowledge-informed generation), the WiScore protocol the SRUM paper reports (Table 3).

Protocol, from github.com/PKU-YuanGroup/WISE at eb51174, `WISE_legacy/gpt_eval.py` (the evaluator
instruction: Consistency, Realism and Aesthetic Quality, each 0-2, three lines) and `WISE_legacy/
Calculate.py` (aggregation), re-worded in evaluation/templates/wise.txt (the reference's exact text can be
dropped into `eval.templates_dir/wise.txt`):
  * WiScore of an image = (0.7 * Consistency + 0.2 * Realism + 0.1 * Aesthetic) / 2, in [0, 1];
  * per category (culture, time, space, biology, physics, chemistry) the mean WiScore; the overall score
    weights the categories by their number of prompts (Calculate.py's 0.4 / 0.167 / 0.133 / 0.1 / 0.1 /
    0.1 are exactly those shares for the 1,000 prompts), i.e. the mean over all images.
Categories come from each prompt's `Category` field (the legacy files' prompt-id ranges give the same
split). The reference reads a single digit after each label ("Consistency: 10" would be read as 1); here
a value is read whole and must lie in [0, 2], else the answer is unparsed (excluded, counted), as is an
answer missing any of the three.

The later `verified_merge.json` revision imports the same way (same fields); its own binary protocol
(calculate_verified.py) is not implemented: both files are scored with WiScore here.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping

from ..judging.parse import NUM, AnswerParse, _json_dicts, _key, answer_text, labelled_number, read_number
from .protocol import Ask, Benchmark, ItemScore, answer_row, spec

CATEGORIES = {"cultural knowledge": "culture", "time": "time", "space": "space", "biology": "biology",
              "physical knowledge": "physics", "chemistry": "chemistry"}
ORDER = ("culture", "time", "space", "biology", "physics", "chemistry")
WEIGHTS = {"consistency": 0.7, "realism": 0.2, "aesthetic": 0.1}
_LABELS = {"consistency": re.compile(r"\bconsistency\b[^\S\n]*(?:\([^)\n]{0,20}\))?[^\S\n]*[:=]?", re.I),
           "realism": re.compile(r"\brealism\b[^\S\n]*(?:\([^)\n]{0,20}\))?[^\S\n]*[:=]?", re.I),
           "aesthetic": re.compile(r"\baesthetic(?:[\s_]+quality)?\b[^\S\n]*(?:\([^)\n]{0,20}\))?[^\S\n]*[:=]?", re.I)}
_THREE_LINES = re.compile(r"^\s*([0-9.]+)\s*\n\s*([0-9.]+)\s*\n\s*([0-9.]+)\s*$")


class WiseFormatError(ValueError):
    pass


def parse_prompts(text: str, source: str) -> List[Any]:
    """A WISE JSON list -> prompts (id wise-<prompt_id>; meta keeps explanation, subcategory, prompt_id)."""
    from ..records import Prompt

    from ..prompts import json_rows

    out = []
    for entry, row in json_rows(text, source, lines=False, what="WISE file"):
        where = f"{source}: {entry}"
        for f in ("Prompt", "Explanation", "Category", "prompt_id"):
            if f not in row:
                raise WiseFormatError(f"{where}: field '{f}' is missing")
        pid = row["prompt_id"]
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise WiseFormatError(f"{where}: field 'prompt_id' must be an integer")
        cat = CATEGORIES.get(str(row["Category"]).strip().lower())
        if cat is None:
            raise WiseFormatError(f"{where}: field 'Category' is {row['Category']!r}, not a WISE category "
                                  f"({', '.join(sorted(CATEGORIES))})")
        if not isinstance(row["Prompt"], str) or not row["Prompt"].strip():
            raise WiseFormatError(f"{where}: field 'Prompt' must be a non-empty string")
        if not isinstance(row["Explanation"], str):
            raise WiseFormatError(f"{where}: field 'Explanation' must be a string")
        out.append(Prompt(id=f"wise-{pid}", text=row["Prompt"].strip(), category=cat, index=len(out),
                          meta={"explanation": row["Explanation"], "subcategory": row.get("Subcategory"),
                                "prompt_id": pid, "wise_category": row["Category"]}))
    return out


def _in_range(v: Any) -> Any:
    return float(v) if v is not None and 0.0 <= float(v) <= 2.0 else None


def parse_wise(text: Any) -> AnswerParse:
    """{"consistency", "realism", "aesthetic"} in [0, 2], or not parsed."""
    try:
        body = answer_text(text)
        for obj in _json_dicts(body):
            vals = {"consistency": _key(obj, "consistency"), "realism": _key(obj, "realism"),
                    "aesthetic": _key(obj, "aesthetic_quality", "aesthetic")}
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals.values()):
                got = {k: _in_range(v) for k, v in vals.items()}
                return AnswerParse(all(v is not None for v in got.values()),
                                   got if all(v is not None for v in got.values()) else None)
        got: Dict[str, Any] = {}
        for k, label in _LABELS.items():
            read = labelled_number(body, label)
            got[k] = _in_range(read.value) if read.status == NUM else None
        if all(v is None for v in got.values()):
            m = _THREE_LINES.match(body)       # the reference's fallback: three bare lines of scores
            if m:
                reads = [read_number(g) for g in m.groups()]
                got = {k: (_in_range(r.value) if r.status == NUM else None) for k, r in zip(_LABELS, reads)}
        if all(v is not None for v in got.values()):
            return AnswerParse(True, got)
    except Exception:  # noqa: BLE001 - never raise on any text
        pass
    return AnswerParse(False, None)


def wiscore(c: float, r: float, a: float) -> float:
    return (WEIGHTS["consistency"] * c + WEIGHTS["realism"] * r + WEIGHTS["aesthetic"] * a) / 2.0


class Wise(Benchmark):
    name = "wise"
    title = "WISE (WiScore)"
    metrics = ("wiscore", "consistency", "realism", "aesthetic")
    unit = "points"          # WiScore in [0, 1] is shown as is (the paper prints e.g. 0.52)
    category_order = ORDER
    prompt_format = "wise"
    needs_meta = ("explanation",)

    def template_names(self):
        return {"wise": spec(["prompt", "explanation"])}

    async def score(self, ask: Ask, prompt: Any) -> ItemScore:
        a = await ask("wiscore", self.templates.render("wise", prompt=prompt.text,
                                                       explanation=" ".join(str(prompt.meta["explanation"]).split())),
                      parse_wise)
        rows = [answer_row("wiscore", a)]
        if not a.parsed:
            return ItemScore.unparsed(rows, "Consistency, Realism and Aesthetic Quality not all readable in [0, 2]")
        v = a.value
        return ItemScore(values={"wiscore": wiscore(v["consistency"], v["realism"], v["aesthetic"]), **v},
                         parsed=True, answers=rows)

    def aggregate(self, means: Mapping[str, Any], counts: Mapping[str, int]) -> Dict[str, Any]:
        return super().aggregate(means, counts)   # overall: categories weighted by their prompt counts
