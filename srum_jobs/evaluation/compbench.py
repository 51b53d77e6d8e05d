"""T2I-CompBench as the SRUM paper scores it (Table 1): a separate VLM evaluator (Qwen2.5-VL-32B/72B in
the paper) rates each image's agreement with its prompt from 0 to 100.

Protocol, from the public SRUM reference implementation (github.com/WayneJin0918/SRUM, commit a53ba18:
`CompBench_eval/qwen_eval.py` for the evaluator instruction and score extraction, `qwen_eval.sh` and
`calculate_mean.py` for the aggregation), re-worded here (evaluation/templates/compbench.txt; put the
reference's exact wording in `eval.templates_dir/compbench.txt` for a strictly comparable number):
  * the evaluator is asked for a JSON object {score: 0-100 integer, explanation};
  * per category: the mean score of its images;
  * the three complex categories (complex, complex_action, complex_spatial) are averaged into one
    "complex" column, and the overall score is the mean of the seven base categories and that column
    (eight columns, as in Table 1).
One difference on purpose: the reference records an unreadable answer as -1 and its mean includes it;
here an unreadable answer is unparsed, excluded and counted.

Prompts: the T2I-CompBench JSON list {"Question", "Category", "Question_id"} (`--format compbench`).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping

from ..judging.parse import (ABSENT, NUM, AnswerParse, _json_dicts, _key, answer_text, bare_number, labelled_number,
                             read_number)
from .protocol import Ask, Benchmark, ItemScore, answer_row, mean_of_rows, ordered, spec

BASE_CATEGORIES = ("color", "shape", "texture", "spatial", "non-spatial", "numeracy", "3d_spatial")
COMPLEX_CATEGORIES = ("complex", "complex_action", "complex_spatial")
COMPLEX_COLUMN = "complex (3 combined)"
_SCORE_LABEL = re.compile(r"\bscore\b[\"']?[^\S\n]*[:=]", re.I)


def parse_compbench(text: Any) -> AnswerParse:
    """A 0-100 score: JSON {"score": 72, ...} first, else `score: 72`, else a bare number. Outside
    [0, 100] or not read whole (72,5,3 / 70-80 / 72%): not parsed."""
    try:
        body = answer_text(text)
        for obj in _json_dicts(body):
            v = _key(obj, "score")
            if v is None or isinstance(v, bool):
                continue
            read = read_number(str(v)) if isinstance(v, str) else None
            value = float(v) if isinstance(v, (int, float)) else (read.value if read and read.status == NUM else None)
            return _in_range(value)
        read = labelled_number(body, _SCORE_LABEL)
        if read.status == ABSENT:
            read = bare_number(body)
        return _in_range(read.value if read.status == NUM else None)
    except Exception:  # noqa: BLE001 - never raise on any text
        return AnswerParse(False, None)


def _in_range(v: Any) -> AnswerParse:
    if v is None or not 0.0 <= float(v) <= 100.0:
        return AnswerParse(False, None)
    return AnswerParse(True, float(v))


class CompBench(Benchmark):
    name = "compbench"
    title = "T2I-CompBench (VLM evaluator, SRUM protocol)"
    metrics = ("score",)
    unit = "points"
    category_order = BASE_CATEGORIES + COMPLEX_CATEGORIES
    prompt_format = "compbench"

    def template_names(self):
        return {"compbench": spec(["prompt"])}

    async def score(self, ask: Ask, prompt: Any) -> ItemScore:
        a = await ask("score", self.templates.render("compbench", prompt=prompt.text), parse_compbench)
        rows = [answer_row("score", a)]
        if not a.parsed:
            return ItemScore.unparsed(rows, "no readable 0-100 score")
        return ItemScore(values={"score": a.value}, parsed=True, answers=rows)

    def rows(self, categories):
        present = ordered(categories, self.category_order)
        derived = [COMPLEX_COLUMN] if any(c in COMPLEX_CATEGORIES for c in categories) else []
        return present + derived + ["overall"]

    def aggregate(self, means: Mapping[str, Any], counts: Mapping[str, int]) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(means)
        complex_present = [c for c in COMPLEX_CATEGORIES if c in means]
        if complex_present:
            out[COMPLEX_COLUMN] = sum(means[c] for c in complex_present) / len(complex_present)
        columns = [c for c in means if c not in COMPLEX_CATEGORIES] + ([COMPLEX_COLUMN] if complex_present else [])
        out["overall"] = mean_of_rows(out, columns)
        return out
