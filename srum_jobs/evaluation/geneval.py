"""GenEval (Ghosh et al. 2023), its metadata as published, scored by asking a VLM evaluator.

GenEval's own scorer detects objects with Mask2Former (mmdetection) and classifies colours with CLIP.
That detector is **not used here**: it needs mmcv/mmdetection and downloaded detector weights, which this
project cannot install or fetch in its environment, and it would be a second model stack beside the
Triton evaluator every other benchmark uses. Instead, the srum_evaluator model is asked the structured
questions the metadata implies, and the answers are combined with GenEval's own rules
(`evaluation/evaluate_images.py` of github.com/djghosh13/geneval, as vendored in the SRUM reference at
eval/gen/geneval/evaluation/evaluate_images.py):
  * include clauses are ANDed: for each, "how many <class>?" must be >= its count; with a colour, "how
    many <colour> <class>?" must be >= its count; with a position [relation, j], "is the <class>
    <relation> the <class of clause j>?" must be yes (asked only when both clauses matched, as GenEval
    checks position only on matched groups);
  * exclude clauses are ORed: "how many <class>?" >= its count fails the image;
  * an image is correct or not (1 / 0); per task (the metadata's `tag`) the share correct; overall =
    the mean over the six tasks (single object, two objects, counting, colours, position, colour
    attribution), as GenEval's summary_scores.py reports it.
Numbers from a VLM and from the detector are therefore not the same measurement; compare runs scored
the same way. An unreadable answer makes the image unparsed (excluded, counted), never wrong or right.

Prompts: `evaluation_metadata.jsonl` as published, one {"tag", "include", "exclude"?, "prompt"} a line
(`--format geneval`); ids are `geneval-<line>`, the metadata is kept in `Prompt.meta`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

from ..judging.parse import parse_count, parse_yes_no
from .protocol import Ask, Benchmark, ItemScore, answer_row, mean_of_rows, ordered, spec

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


class GenEvalFormatError(ValueError):
    """GenEval metadata that cannot be used; the message names the file, the line and the field."""


def parse_prompts(text: str, source: str) -> List[Any]:
    """GenEval metadata JSONL -> prompts (category = tag; meta = tag, include, exclude)."""
    from ..records import Prompt

    from ..prompts import json_rows

    prompts: List[Any] = []
    for line, row in json_rows(text, source, lines=True):
        lineno, where = int(line.split()[-1]), f"{source}: {line}"
        unknown = set(row) - {"tag", "include", "exclude", "prompt"}
        if unknown:
            raise GenEvalFormatError(f"{where}: unknown field(s) {sorted(unknown)} for GenEval metadata")
        for f in ("tag", "include", "prompt"):
            if f not in row:
                raise GenEvalFormatError(f"{where}: field '{f}' is missing")
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise GenEvalFormatError(f"{where}: field 'prompt' must be a non-empty string")
        if not isinstance(row["tag"], str) or not row["tag"]:
            raise GenEvalFormatError(f"{where}: field 'tag' must be a non-empty string")
        include = _clauses(row["include"], where, "include", allow_position=True)
        exclude = _clauses(row.get("exclude", []), where, "exclude", allow_position=False)
        if not include:
            raise GenEvalFormatError(f"{where}: field 'include' is empty")
        for i, c in enumerate(include):
            if "position" in c and not 0 <= c["position"][1] < i:
                raise GenEvalFormatError(f"{where}: include[{i}].position refers to clause {c['position'][1]}, "
                                         f"which must be an earlier include clause")
        prompts.append(Prompt(id=f"geneval-{lineno:04d}", text=row["prompt"].strip(), category=row["tag"],
                              index=len(prompts), meta={"tag": row["tag"], "include": include, "exclude": exclude}))
    return prompts


def _clauses(value: Any, where: str, field: str, *, allow_position: bool) -> List[Dict[str, Any]]:
    if not isinstance(value, list):
        raise GenEvalFormatError(f"{where}: field '{field}' must be a list")
    out = []
    for i, c in enumerate(value):
        at = f"{where}: {field}[{i}]"
        if not isinstance(c, dict):
            raise GenEvalFormatError(f"{at} must be an object")
        allowed = {"class", "count", "color"} | ({"position"} if allow_position else set())
        if set(c) - allowed:
            raise GenEvalFormatError(f"{at}: unknown field(s) {sorted(set(c) - allowed)}")
        if not isinstance(c.get("class"), str) or not c["class"].strip():
            raise GenEvalFormatError(f"{at}.class must be a non-empty string")
        n = c.get("count")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise GenEvalFormatError(f"{at}.count must be an integer >= 1")
        if "color" in c and (not isinstance(c["color"], str) or not c["color"]):
            raise GenEvalFormatError(f"{at}.color must be a non-empty string")
        if "position" in c:
            p = c["position"]
            if (not isinstance(p, list) or len(p) != 2 or p[0] not in RELATIONS or isinstance(p[1], bool)
                    or not isinstance(p[1], int)):
                raise GenEvalFormatError(f"{at}.position must be [relation, clause index] with a relation in "
                                         f"{sorted(RELATIONS)}")
        out.append(dict(c))
    return out


class GenEval(Benchmark):
    name = "geneval"
    title = "GenEval (VLM evaluator answering the metadata's questions)"
    metrics = ("accuracy",)
    unit = "%"
    category_order = TASKS
    prompt_format = "geneval"
    needs_meta = ("include",)

    def template_names(self):
        return {"geneval_count": spec(["object"], ["prompt"]),
                "geneval_color": spec(["object", "color"], ["prompt"]),
                "geneval_position": spec(["subject", "relation", "target"], ["prompt"])}

    async def score(self, ask: Ask, prompt: Any) -> ItemScore:
        meta = prompt.meta
        rows: List[Dict[str, Any]] = []
        counts: Dict[str, int] = {}

        async def count(cls: str, color: str = "") -> Any:
            key = f"count:{color + ' ' if color else ''}{cls}"
            if key in counts:
                return counts[key]
            name = "geneval_color" if color else "geneval_count"
            a = await ask(key, self.templates.render(name, prompt=prompt.text, object=cls, color=color), parse_count)
            rows.append(answer_row(key, a))
            counts[key] = a.value if a.parsed else None
            return counts[key]

        correct = True
        reasons: List[str] = []
        matched: List[bool] = []
        for i, req in enumerate(meta["include"]):
            ok = True
            n = await count(req["class"])
            if n is None:
                return ItemScore.unparsed(rows, f"no readable count of {req['class']}")
            if n < req["count"]:
                ok = False
                reasons.append(f"expected {req['class']}>={req['count']}, counted {n}")
            else:
                if "color" in req:
                    nc = await count(req["class"], req["color"])
                    if nc is None:
                        return ItemScore.unparsed(rows, f"no readable count of {req['color']} {req['class']}")
                    if nc < req["count"]:
                        ok = False
                        reasons.append(f"expected {req['color']} {req['class']}>={req['count']}, counted {nc}")
                if "position" in req and ok:
                    rel, j = req["position"]
                    if not matched[j]:
                        ok = False
                        reasons.append(f"no target for {req['class']} to be {rel}")
                    else:
                        key = f"position:{i}"
                        a = await ask(key, self.templates.render(
                            "geneval_position", prompt=prompt.text, subject=req["class"], relation=RELATIONS[rel],
                            target=meta["include"][j]["class"]), parse_yes_no)
                        rows.append(answer_row(key, a))
                        if not a.parsed:
                            return ItemScore.unparsed(rows, f"no readable yes/no for {req['class']} {rel}")
                        if not a.value:
                            ok = False
                            reasons.append(f"{req['class']} is not {rel} {meta['include'][j]['class']}")
            matched.append(ok)
            correct = correct and ok
        for req in meta.get("exclude", []):
            n = await count(req["class"])
            if n is None:
                return ItemScore.unparsed(rows, f"no readable count of {req['class']}")
            if n >= req["count"]:
                correct = False
                reasons.append(f"expected {req['class']}<{req['count']}, counted {n}")
        return ItemScore(values={"accuracy": 1.0 if correct else 0.0}, parsed=True, answers=rows,
                         note="; ".join(reasons) or "every clause holds")

    def rows(self, categories):
        return ordered(categories, self.category_order) + ["overall"]

    def aggregate(self, means: Mapping[str, Any], counts: Mapping[str, int]) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(means)
        out["overall"] = mean_of_rows(out, list(means))       # the mean over tasks, as GenEval reports it
        return out
