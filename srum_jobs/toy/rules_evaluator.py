"""`ToyRulesEvaluator`: the toy world's rule-based benchmark (evaluator.py) as a judge backend, so the
srum_evaluator Triton model can serve it and the toy benchmark takes the real evaluation path
(instruction -> Triton -> text -> the benchmark's parser).

It reads the instruction contract of evaluation/templates/toy.txt and step_*.txt: a `Prompt:` line and a
`Check:` line, and answers
  Check: benchmark -> "Answer: yes|no" and the verdict's reason (evaluator.verdict: exactly the prompt's
                      objects, colours, shapes, counts and arrangement, nothing else);
  Check: layout    -> "Score: 0-100": the colour blobs in the prompt's numbers (shape ignored), halved when
                      a spatial relation does not hold;
  Check: detail    -> "Score: 0-100": how well the blobs fit an ideal shape (mean best IoU of evaluator.shape_fits).
A prompt outside the toy grammar, or an instruction without those lines, gets an answer that says so and
carries no score, which the benchmark's parser reports as unparsed. It is not the model being trained:
it has no learned part at all.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from ..judging.protocols import JudgeParams, JudgeReply
from . import world
from .evaluator import find_objects, judge_found, shape_fits

_PROMPT = re.compile(r"^[ \t]*Prompt:[ \t]*(.*?)[ \t]*$", re.M)
_CHECK = re.compile(r"^[ \t]*Check:[ \t]*(benchmark|layout|detail)\b", re.M | re.I)


def layout_score(found, spec: world.PromptSpec) -> float:
    """Share of the prompt's colour blobs present in the right numbers (shape ignored), x0.5 if a stated
    relation does not hold between the first blobs of the two colours."""
    want = Counter(o.color for o in spec.objects)
    got = Counter(f.color for f in found)
    overlap = sum(min(n, got[c]) for c, n in want.items()) / max(sum(want.values()), sum(got.values()), 1)
    if spec.relation is not None and overlap > 0:
        a, b = spec.ordered
        fa = [f for f in found if f.color == a.color]
        fb = [f for f in found if f.color == b.color and f is not (fa[0] if fa else None)]
        if not fa or not fb or not world.relation_holds(fa[0].centroid, fb[0].centroid, spec.relation):
            overlap *= 0.5
    return 100.0 * overlap


def detail_score(image: Any, found) -> float:
    """Mean over the blobs of the best IoU with an ideal circle, square or triangle (0 with no blob)."""
    if not found:
        return 0.0
    arr = world.to_array(image)
    from .components import label_classes
    from .evaluator import segment_colors

    labels, _ = label_classes(segment_colors(arr))
    fits = []
    for f in found:
        x0, y0, x1, y1 = f.box
        sub = labels[y0:y1, x0:x1]
        ids, counts = np.unique(sub[sub > 0], return_counts=True)
        if len(ids) == 0:
            continue
        mask = sub == ids[counts.argmax()]
        fits.append(max(shape_fits(mask).values()))
    return 100.0 * float(np.mean(fits)) if fits else 0.0


def answer(image: Any, instruction: str) -> str:
    pm, cm = _PROMPT.search(instruction), _CHECK.search(instruction)
    if not pm or not cm:
        return "I can only check instructions with a 'Prompt:' line and a 'Check:' line (benchmark, layout or detail)."
    prompt, check = pm.group(1), cm.group(1).lower()
    try:
        spec = world.parse_prompt(prompt)
    except world.PromptParseError:
        return f"The prompt {prompt!r} is outside the toy world's grammar, so I cannot judge it."
    found = find_objects(image)
    if check == "benchmark":
        v = judge_found(found, spec)
        return f"Answer: {'yes' if v.ok else 'no'}\nReason: {v.reason}."
    if check == "layout":
        return f"Score: {layout_score(found, spec):.0f}\nReason: colour blobs and their arrangement against the prompt."
    return f"Score: {detail_score(image, found):.0f}\nReason: how cleanly the blobs fit an ideal shape."


class ToyRulesEvaluator:
    """JudgeBackend (judging/protocols.py) over the toy world's hand-written rules. No parameters; think
    mode returns what was found as think text."""

    name = "toy_rules"

    def __init__(self, params: Optional[Mapping[str, Any]] = None):
        unknown = sorted(set(params or {}) - {"threads"})
        if unknown:
            raise ValueError(f"toy_rules evaluator: unknown parameter(s) {unknown}; it takes none")

    def generate(self, images: Sequence[Any], instructions: Sequence[str], params: JudgeParams) -> List[JudgeReply]:
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        out = []
        for img, ins in zip(images, instructions):
            think = ""
            if params.think:
                think = "; ".join(f"{f.color} {f.shape or 'blob'} at ({f.centroid[0]:.1f}, {f.centroid[1]:.1f})"
                                  for f in find_objects(img)) or "nothing"
            out.append(JudgeReply(text=answer(img, ins), think_text=think))
        return out
