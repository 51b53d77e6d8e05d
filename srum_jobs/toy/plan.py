"""Think mode of the toy model: the understanding side writes a layout plan, the generator draws from it.

A plan names every object the prompt asks for with its colour, shape and a target region, one cell of a
3 x 3 grid over the canvas, as text (what a record keeps as its think text, like Bagel's):

    The prompt asks for 2 objects. Plan: red circle at middle left; blue square at middle right.

`parse_plan` reads that text back (the trainer conditions on what the record kept, never on hidden
state). `layout_tensor` renders a plan as the generator's extra input channels: inside each planned cell
the object's palette colour (3 channels), its shape (3 one-hot channels) and a cell mask, plus one
channel that is 1 everywhere when a plan is present; plain mode is all zeros, so one network generates
both ways (pretraining drops the plan for a share of samples, as classifier-free guidance drops text).

The planner (`write_plan`) imagines a layout the way the world's renderer would place the objects
(world.place, seeded per candidate, so K candidates get K different plans) and keeps it only if the
objects land in distinct cells and, for a spatial prompt, the cell centres satisfy the relation clearly.
The plan is therefore always right about *what* and *where*; whether the image follows it is the
generator's business, which is what the judge then scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import world

ROWS: Tuple[str, ...] = ("top", "middle", "bottom")
COLS: Tuple[str, ...] = ("left", "center", "right")
# Cell edges in pixels (3 cells over the 32-pixel canvas: 11, 10 and 11 pixels).
EDGES: Tuple[int, ...] = (0, 11, 21, 32)
# colour RGB (3), shape one-hot (3), cell mask (1), plan present (1)
PLAN_CHANNELS = 8


class PlanParseError(ValueError):
    """Think text that holds no readable plan; the message quotes it."""


@dataclass(frozen=True)
class PlannedObject:
    obj: world.Obj
    row: int
    col: int

    @property
    def cell(self) -> str:
        return f"{ROWS[self.row]} {COLS[self.col]}"

    @property
    def centre(self) -> Tuple[float, float]:
        """(x, y) of the cell's centre in pixels."""
        return ((EDGES[self.col] + EDGES[self.col + 1]) / 2.0, (EDGES[self.row] + EDGES[self.row + 1]) / 2.0)


@dataclass(frozen=True)
class Plan:
    objects: Tuple[PlannedObject, ...]

    def text(self) -> str:
        items = "; ".join(f"{p.obj.phrase()} at {p.cell}" for p in self.objects)
        n = len(self.objects)
        return f"The prompt asks for {n} object{'s' if n != 1 else ''}. Plan: {items}."


def _cell_index(v: float) -> int:
    return int(np.clip(np.searchsorted(EDGES, v, side="right") - 1, 0, len(EDGES) - 2))


def plan_from_placements(placed: Sequence[world.Placed]) -> Plan:
    """The plan a ground-truth render follows: each object in the cell holding its box centre."""
    out = []
    for p in placed:
        cx, cy = p.x0 + p.size / 2.0, p.y0 + p.size / 2.0
        out.append(PlannedObject(p.obj, _cell_index(cy), _cell_index(cx)))
    return Plan(tuple(out))


def _acceptable(plan: Plan, spec: world.PromptSpec) -> bool:
    cells = [(p.row, p.col) for p in plan.objects]
    if len(set(cells)) != len(cells):
        return False
    if spec.relation is not None:
        a, b = plan.objects[0], plan.objects[1]
        return world.relation_holds(a.centre, b.centre, spec.relation, margin=2.0)
    return True


# The cells a tidy plan uses: a relation's two objects on either side of the centre; otherwise the objects
# in a row through the middle, in the order the prompt names them.
_TIDY_RELATION = {"left": ((1, 0), (1, 2)), "right": ((1, 2), (1, 0)),
                  "above": ((0, 1), (2, 1)), "below": ((2, 1), (0, 1))}
_TIDY_ROW = {1: ((1, 1),), 2: ((1, 0), (1, 2)), 3: ((1, 0), (1, 1), (1, 2))}


def tidy_plan(spec: world.PromptSpec) -> Plan:
    """The canonical plan of a prompt spec: one low-entropy composition per prompt wording (a reasoning
    step settling on a tidy layout). "A left of B": A middle left, B middle right; "A above B": A top
    centre, B bottom centre; otherwise the objects in the middle row, left to right in the prompt's order."""
    if spec.relation is not None:
        cells = _TIDY_RELATION[spec.relation]
        objs = spec.ordered
    else:
        objs = spec.mentioned or spec.objects
        if len(objs) not in _TIDY_ROW:
            raise ValueError(f"a tidy plan lays out 1 to 3 objects, not {len(objs)}")
        cells = _TIDY_ROW[len(objs)]
    return Plan(tuple(PlannedObject(o, r, c) for o, (r, c) in zip(objs, cells)))


# How the understanding side lays out a plan: "tidy" (tidy_plan, the default: what self-training can
# teach plain mode is this prior) or "random" (random_plan: a layout the renderer could draw, the
# pretraining distribution).
PLANNERS = ("tidy", "random")
DEFAULT_PLANNER = "tidy"


def write_plan(spec: world.PromptSpec, rng: np.random.Generator, planner: str = DEFAULT_PLANNER) -> Plan:
    if planner == "tidy":
        return tidy_plan(spec)
    if planner == "random":
        return random_plan(spec, rng)
    raise ValueError(f"unknown planner {planner!r}; planners are {', '.join(PLANNERS)}")


def random_plan(spec: world.PromptSpec, rng: np.random.Generator, max_tries: int = 200) -> Plan:
    """A plan for a prompt spec: a layout the renderer could draw, abstracted to cells (distinct cells, the
    relation clear between cell centres). Spatial prompts list their objects in the relation's order."""
    for _ in range(max_tries):
        plan = plan_from_placements(world.place(spec, rng))
        if _acceptable(plan, spec):
            return plan
    # every prompt of the grammar has acceptable layouts; this only guards against an endless loop
    raise RuntimeError(f"no acceptable plan for {[o.phrase() for o in spec.objects]} in {max_tries} tries")


# The think text for a prompt outside the grammar: no plan, the image is drawn in plain mode.
NO_PLAN_TEXT = "The prompt is outside what I can plan; drawing it without a plan."


def think_text(prompt: str, seed: int, planner: str = DEFAULT_PLANNER) -> Tuple[str, Optional[Plan]]:
    """What the understanding side writes in think mode for one candidate: (text, plan or None). A prompt
    outside the grammar gets NO_PLAN_TEXT and no plan (the image is then drawn in plain mode)."""
    try:
        spec = world.parse_prompt(prompt)
    except world.PromptParseError:
        return NO_PLAN_TEXT, None
    plan = write_plan(spec, np.random.default_rng([int(seed) & 0x7FFFFFFF, 7]), planner)
    return plan.text(), plan


_ITEM_RE = re.compile(rf"^\s*({'|'.join(world.COLOR_NAMES)})\s+({'|'.join(world.SHAPES)})\s+at\s+"
                      rf"({'|'.join(ROWS)})\s+({'|'.join(COLS)})\s*$", re.I)


def parse_plan(text: str) -> Plan:
    """Think text -> Plan. The text must hold `Plan:` followed by `;`-separated `<colour> <shape> at <row>
    <column>` items (what Plan.text writes); anything else raises PlanParseError quoting the text."""
    m = re.search(r"Plan:\s*(.*?)\s*\.?\s*$", str(text), re.S)
    if not m or not m.group(1).strip():
        raise PlanParseError(f"think text {text!r} holds no 'Plan: ...' (e.g. 'Plan: red circle at top left.')")
    items = []
    for part in m.group(1).split(";"):
        im = _ITEM_RE.match(part)
        if not im:
            raise PlanParseError(f"think text {text!r}: {part.strip()!r} is not '<colour> <shape> at <row> <column>' "
                                 f"(rows {', '.join(ROWS)}; columns {', '.join(COLS)})")
        obj = world.Obj(im.group(1).lower(), im.group(2).lower())
        items.append(PlannedObject(obj, ROWS.index(im.group(3).lower()), COLS.index(im.group(4).lower())))
    if len(items) > 3:
        raise PlanParseError(f"think text {text!r} plans {len(items)} objects; the toy world draws 1 to 3")
    return Plan(tuple(items))


def layout_array(plan: Optional[Plan], canvas: int = world.CANVAS) -> np.ndarray:
    """(PLAN_CHANNELS, canvas, canvas) float32: the generator's plan input; all zeros without a plan.
    Objects planned into one cell share it (their channels are averaged)."""
    out = np.zeros((PLAN_CHANNELS, canvas, canvas), dtype=np.float32)
    if plan is None:
        return out
    if canvas != world.CANVAS:
        raise ValueError(f"plans are drawn on the {world.CANVAS}-pixel canvas, not {canvas}")
    count = np.zeros((canvas, canvas), dtype=np.float32)
    for p in plan.objects:
        ys, xs = slice(EDGES[p.row], EDGES[p.row + 1]), slice(EDGES[p.col], EDGES[p.col + 1])
        rgb = np.asarray(world.COLORS[p.obj.color], dtype=np.float32) / 127.5 - 1.0
        out[0:3, ys, xs] += rgb[:, None, None]
        out[3 + world.SHAPES.index(p.obj.shape), ys, xs] += 1.0
        count[ys, xs] += 1.0
    filled = count > 0
    out[:6, filled] /= count[filled]
    out[6] = filled
    out[7] = 1.0
    return out


def plan_of(text: Optional[str]) -> Optional[Plan]:
    """The plan a think text holds; None for no text, '' or NO_PLAN_TEXT (plain mode)."""
    if not text or text == NO_PLAN_TEXT:
        return None
    return parse_plan(text)


def layouts(think_texts: Sequence[Optional[str]]):
    """(B, PLAN_CHANNELS, H, W) torch tensor from think texts (plan_of: no plan is zeros, plain mode)."""
    import torch

    arrs: List[np.ndarray] = [layout_array(plan_of(t)) for t in think_texts]
    return torch.from_numpy(np.stack(arrs)) if arrs else torch.zeros(0, PLAN_CHANNELS, world.CANVAS, world.CANVAS)
