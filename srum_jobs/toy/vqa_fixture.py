"""The shipped understanding-regression set: MME-style yes/no pairs and multiple-choice questions about
toy-world images, made here from a seed (no files to download, the same set on every machine).

Each image is a ground-truth render of a composition. MME asks two questions per image, one true and one
false, in each perception subtask; here the subtasks are count, color, shape and position, and the false
statement differs from the true one in exactly that respect. A multiple-choice item offers the true
description and three such variations. Every statement is in the toy grammar, so the same item can be
asked as a question (a VLM) or as a claim in the judge's own instruction format (the toy model's
understanding side, which speaks only that).

Items are plain dicts (image, question, answer, options, claims, category, pair): the runner
(evaluation/understanding.py) reads the same fields from a user's JSONL set.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import world

SUBTASKS = ("count", "color", "shape", "position")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_QUESTION = "Does this image show exactly this, and nothing else: {}?"
_CHOICE = "Which description matches this image exactly?"


def _scene(rng: np.random.Generator, subtask: str) -> Tuple[Tuple[world.Obj, ...], Tuple[int, ...], Optional[str]]:
    objs = list(world.ALL_OBJECTS)
    a = objs[int(rng.integers(len(objs)))]
    others = [o for o in objs if o.color != a.color and o.shape != a.shape]
    b = others[int(rng.integers(len(others)))]
    if subtask == "position":
        return (a, b), (1, 1), world.RELATIONS[int(rng.integers(4))]
    if subtask == "count":
        counts = [(1,), (2,), (3,), (1, 1), (1, 2), (2, 1)][int(rng.integers(6))]
        return ((a,) if len(counts) == 1 else (a, b)), counts, None
    return (a, b), (1, 1), None


def _text(objs, counts, relation) -> str:
    if relation is not None:
        return world.phrase("spatial", objs, counts, relation)
    return world.phrase("numeracy", objs, counts)


def _variations(objs, counts, relation, subtask: str, rng: np.random.Generator) -> List[str]:
    """Statements about the scene that are false in exactly the subtask's respect."""
    out = []
    used_colors = {o.color for o in objs}
    if subtask == "position":
        out.append(_text(objs, counts, OPPOSITE[relation]))
    elif subtask == "count":
        for i, n in enumerate(counts):
            for m in (n - 1, n + 1):
                new = list(counts)
                new[i] = m
                if m >= 1 and sum(new) <= 3:
                    out.append(_text(objs, tuple(new), None))
    elif subtask == "color":
        for i, o in enumerate(objs):
            for c in world.COLOR_NAMES:
                if c not in used_colors:
                    new = list(objs)
                    new[i] = world.Obj(c, o.shape)
                    out.append(_text(tuple(new), counts, relation))
    else:
        for i, o in enumerate(objs):
            for s in world.SHAPES:
                new = list(objs)
                new[i] = world.Obj(o.color, s)
                if s != o.shape and len(set(new)) == len(new):
                    out.append(_text(tuple(new), counts, relation))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def build_fixture(images_per_subtask: int = 6, choice_items: int = 8, seed: int = 7) -> List[Dict[str, Any]]:
    """The set: `images_per_subtask` yes/no pairs per subtask and `choice_items` four-option questions."""
    rng = np.random.default_rng(seed)
    items: List[Dict[str, Any]] = []

    def image(objs, counts, relation):
        return world.to_pil(world.render_prompt(_text(objs, counts, relation), rng))

    for subtask in SUBTASKS:
        for k in range(images_per_subtask):
            objs, counts, relation = _scene(rng, subtask)
            truth = _text(objs, counts, relation)
            false = _variations(objs, counts, relation, subtask, rng)[0]
            img = image(objs, counts, relation)
            pair = f"{subtask}-{k:02d}"
            for claim, answer in ((truth, "yes"), (false, "no")):
                items.append({"id": f"{pair}-{answer}", "image": img, "question": _QUESTION.format(claim),
                              "answer": answer, "category": subtask, "pair": pair, "claims": [claim]})
    for k in range(choice_items):
        subtask = SUBTASKS[k % len(SUBTASKS)]
        objs, counts, relation = _scene(rng, subtask)
        truth = _text(objs, counts, relation)
        # three false options, taken in turn from each respect that applies (position needs a relation,
        # a count change needs no relation)
        applicable = [t for t in SUBTASKS if (t == "position") == (relation is not None) or t in ("color", "shape")]
        pools = [_variations(objs, counts, relation, t, rng) for t in applicable]
        wrong: List[str] = []
        for depth in range(max(len(p) for p in pools)):
            wrong += [p[depth] for p in pools if depth < len(p) and p[depth] not in wrong and p[depth] != truth]
        wrong = wrong[:3]
        options = wrong + [truth]
        order = rng.permutation(len(options))
        options = [options[i] for i in order]
        letters = "ABCD"[:len(options)]
        items.append({"id": f"choice-{k:02d}", "image": image(objs, counts, relation), "question": _CHOICE,
                      "options": options, "answer": letters[options.index(truth)], "category": "choice",
                      "claims": options})
    return items


def letters(options: Sequence[str]) -> str:
    return "ABCDEFGH"[:len(options)]
