"""T2I-ReasonBench (Sun et al. 2025), the per-prompt question-criterion protocol (SRUM paper, Table 4).

Protocol, from github.com/jiachunjin/T2I-ReasonBench at 333e62d (`evaluation/Qwen2.5-VL/eval_{idiom,
textual_image,entity,scientific}.py`), re-worded in evaluation/templates/reasonbench_*.txt:
  1. the evaluator first describes the image ("Describe this image.");
  2. then, for each group of questions of the prompt (the `*_evaluation` fields of its evaluation file),
     it answers every question q_i with 1, 0.5 or 0 by its criterion c_i, as JSON {"reason", "score": [...]};
     a group's value is the mean of its scores;
  3. per image: idiom and textual design: reasoning accuracy = the reason group; entity and scientific:
     accuracy = 0.7 * (entity | scientific group) + 0.3 * (other-details group); image quality = the
     quality group;
  4. per dimension the mean over images (x100 in the tables), overall = the mean of the four dimensions.
The reference asks the follow-up questions in the same chat after the description; the Triton evaluator
takes one image and one instruction per request, so here the description is quoted in each follow-up
instruction instead. An answer whose score list is missing, of the wrong length, or holds a value other
than 1, 0.5 or 0 is unparsed (excluded, counted); the reference's extraction would raise and drop it.

Prompts: the benchmark's `prompts/<dimension>.json` joined by id with `evaluation_qs/evaluation_<dim>.json`
(`--format reasonbench`; a directory holding both folders imports all four dimensions, 4 x 200).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..judging.parse import NUM, AnswerParse, _json_dicts, _key, answer_text, read_number
from .protocol import Ask, Benchmark, ItemScore, answer_row, mean_of_rows, ordered, spec

# dimension -> (prompt file, evaluation file, accuracy groups with weights, quality group)
DIMENSIONS: Dict[str, Tuple[str, str, Tuple[Tuple[str, float], ...], str]] = {
    "idiom": ("idiom_interpretation.json", "evaluation_idiom.json", (("reason_evaluation", 1.0),),
              "quality_evaluation"),
    "textual": ("textual_image_design.json", "evaluation_textual_image.json", (("reason_evaluation", 1.0),),
                "quality_evaluation"),
    "entity": ("entity_reasoning.json", "evaluation_entity.json",
               (("entity_evaluation", 0.7), ("other_details_evaluation", 0.3)), "quality_evaluation"),
    "scientific": ("scientific_reasoning.json", "evaluation_scientific.json",
                   (("scientific_evaluation", 0.7), ("other_details_evaluation", 0.3)), "quality_evaluation"),
}
ALLOWED_SCORES = (0.0, 0.5, 1.0)
_Q = re.compile(r"^([a-z]*_?)q(\d+)$")
_SCORE_LIST = re.compile(r"\bscores?\b[\"']?[^\S\n]*[:=][^\S\n]*\[([^\]\n]{0,400})\]", re.I)


class ReasonBenchFormatError(ValueError):
    pass


def dimension_of(name: str) -> Optional[str]:
    base = name.rsplit("/", 1)[-1]
    for dim, (pfile, efile, _, _) in DIMENSIONS.items():
        if base in (pfile, efile):
            return dim
    return None


def _questions(group: Any, where: str) -> Dict[str, Any]:
    """A question group as published: q1/c1, q2/c2... (a few entries use prefixed keys such as aq1/ac1 or
    sci_q1/sci_c1, or add a 'scoring' note). Every question needs its criterion; the group is kept whole,
    as the reference hands it to the evaluator."""
    if not isinstance(group, dict):
        raise ReasonBenchFormatError(f"{where} must be an object of q1/c1... pairs")
    qs = [(m.group(1), m.group(2), k) for k in group if (m := _Q.match(k))]
    if not qs:
        raise ReasonBenchFormatError(f"{where} has no question q1")
    for prefix, n, k in qs:
        crit = f"{prefix}c{n}"
        if crit not in group:
            raise ReasonBenchFormatError(f"{where}: question {k} has no criterion {crit}")
        if not isinstance(group[k], str) or not group[k].strip():
            # (a criterion may be a string or, in some published entries, an object: kept as published)
            raise ReasonBenchFormatError(f"{where}: question {k} must be a non-empty string")
    return dict(group)


def question_count(group: Mapping[str, Any]) -> int:
    return sum(1 for k in group if _Q.match(k))


def join(dim: str, prompts_text: str, questions_text: str, prompts_source: str, questions_source: str,
         start_index: int = 0) -> List[Any]:
    """One dimension's prompts joined by id with their question groups."""
    from ..records import Prompt

    pfile, efile, acc_groups, quality = DIMENSIONS[dim]
    rows, qrows = [], []
    from ..prompts import json_rows

    for text, source, out in ((prompts_text, prompts_source, rows), (questions_text, questions_source, qrows)):
        for entry, r in json_rows(text, source, lines=False, what="T2I-ReasonBench file"):
            if isinstance(r.get("id"), bool) or not isinstance(r.get("id"), int):
                raise ReasonBenchFormatError(f"{source}: {entry}: field 'id' must be an integer")
            out.append(r)
    by_id = {r["id"]: r for r in qrows}
    if len(by_id) != len(qrows):
        raise ReasonBenchFormatError(f"{questions_source}: an id appears twice")
    missing = [r["id"] for r in rows if r["id"] not in by_id]
    if missing:
        raise ReasonBenchFormatError(f"{questions_source}: no evaluation questions for prompt id(s) {missing[:10]}"
                                     f" of {prompts_source}")
    extra = sorted(set(by_id) - {r["id"] for r in rows})
    if extra:
        raise ReasonBenchFormatError(f"{questions_source}: questions for id(s) {extra[:10]} that {prompts_source} "
                                     "does not have")
    out = []
    for r in rows:
        where = f"{prompts_source}: id {r['id']}"
        if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
            raise ReasonBenchFormatError(f"{where}: field 'prompt' must be a non-empty string")
        q = by_id[r["id"]]
        groups = {}
        for g in [name for name, _ in acc_groups] + [quality]:
            if g not in q:
                raise ReasonBenchFormatError(f"{questions_source}: id {r['id']}: field '{g}' is missing")
            groups[g] = _questions(q[g], f"{questions_source}: id {r['id']}: {g}")
        meta = {"dimension": dim, "benchmark_id": r["id"], "groups": groups,
                **{k: r[k] for k in ("tag", "idiom", "idiom_meaning", "explicit_meaning") if k in r}}
        out.append(Prompt(id=f"{dim}-{r['id']:04d}", text=r["prompt"].strip(), category=dim,
                          index=start_index + len(out), meta=meta))
    return out


def load(uri: str, storage: Any = None) -> List[Any]:
    """A T2I-ReasonBench checkout (a folder with prompts/ and evaluation_qs/: all four dimensions) or one
    `prompts/<dimension>.json` (its evaluation file is found in ../evaluation_qs/)."""
    from ..prompts import read_source

    root = uri.rstrip("/")
    dim = dimension_of(root)
    if dim is not None:
        parent = root.rsplit("/", 2)[0] if "/" in root else "."
        dims = [dim]
    else:
        parent, dims = root, list(DIMENSIONS)
    out: List[Any] = []
    for d in dims:
        pfile, efile, _, _ = DIMENSIONS[d]
        ptext, pname = read_source(f"{parent}/prompts/{pfile}", storage)
        etext, ename = read_source(f"{parent}/evaluation_qs/{efile}", storage)
        out += join(d, ptext, etext, f"{parent}/prompts/{pfile}", f"{parent}/evaluation_qs/{efile}", len(out))
    return out


def parse_scores(text: Any, n: int) -> AnswerParse:
    """The JSON {"score": [s1..sn]} of one question group: n values, each 1, 0.5 or 0."""
    try:
        body = answer_text(text)
        for obj in _json_dicts(body):
            v = _key(obj, "score", "scores")
            if isinstance(v, list):
                return _checked(v, n)
        m = None
        for m in _SCORE_LIST.finditer(body):
            pass
        if m is not None:
            return _checked([x for x in m.group(1).split(",")], n)
    except Exception:  # noqa: BLE001 - never raise on any text
        pass
    return AnswerParse(False, None)


def _checked(values: Sequence[Any], n: int) -> AnswerParse:
    out = []
    for v in values:
        if isinstance(v, bool):
            return AnswerParse(False, None)
        if isinstance(v, (int, float)):
            x: Optional[float] = float(v)
        else:
            r = read_number(str(v).strip().strip("\"'"))
            x = r.value if r.status == NUM else None
        if x is None or x not in ALLOWED_SCORES:
            return AnswerParse(False, None)
        out.append(x)
    if len(out) != n:
        return AnswerParse(False, None)
    return AnswerParse(True, out)


def _described(text: Any) -> AnswerParse:
    t = answer_text(text).strip()
    return AnswerParse(bool(t), t or None)


class ReasonBench(Benchmark):
    name = "reasonbench"
    title = "T2I-ReasonBench"
    metrics = ("accuracy", "quality")
    unit = "%"
    category_order = ("idiom", "textual", "entity", "scientific")
    prompt_format = "reasonbench"
    needs_meta = ("dimension", "groups")

    def template_names(self):
        return {"reasonbench_describe": spec([], ["prompt"]),
                "reasonbench_questions": spec(["questions", "description"], ["prompt"])}

    async def score(self, ask: Ask, prompt: Any) -> ItemScore:
        meta = prompt.meta
        dim = meta["dimension"]
        _, _, acc_groups, quality = DIMENSIONS[dim]
        d = await ask("describe", self.templates.render("reasonbench_describe", prompt=prompt.text), _described)
        rows = [answer_row("describe", d)]
        if not d.parsed:
            return ItemScore.unparsed(rows, "the evaluator gave no description")
        names = [g for g, _ in acc_groups] + [quality]

        async def group(g: str):
            qs = meta["groups"][g]
            n = question_count(qs)
            instruction = self.templates.render("reasonbench_questions", prompt=prompt.text, description=d.value,
                                                questions=json.dumps(qs, ensure_ascii=False))
            return g, await ask(g, instruction, lambda t, n=n: parse_scores(t, n))

        answers = dict(await asyncio.gather(*(group(g) for g in names)))
        rows += [answer_row(g, answers[g]) for g in names]
        bad = [g for g in names if not answers[g].parsed]
        if bad:
            return ItemScore.unparsed(rows, f"no readable score list for {', '.join(bad)}")
        mean = {g: sum(answers[g].value) / len(answers[g].value) for g in names}
        values = {"accuracy": sum(w * mean[g] for g, w in acc_groups), "quality": mean[quality]}
        values.update({g.removesuffix("_evaluation"): mean[g] for g in names})
        return ItemScore(values=values, parsed=True, answers=rows)

    def rows(self, categories):
        return ordered(categories, self.category_order) + ["overall"]

    def aggregate(self, means: Mapping[str, Any], counts: Mapping[str, int]) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(means)
        out["overall"] = mean_of_rows(out, list(means))       # each dimension weighs the same
        return out
