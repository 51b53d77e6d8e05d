"""The toy model's understanding side (`ToyUnderstanding`; served as a judge by judge_backend.py).

It reads a judge instruction the way a VLM would be asked to, by the instruction contract: the
`Prompt:` line, the `Region <i>: box [x0, y0, x1, y1]` lines, and which answer the instruction asks for
(`Answer:` -> box verification; `Region ID:` -> region judgments; otherwise a whole-image score, the
global *layout* judgment when the instruction speaks of layout, else the sample-level judgment). It
answers in the judge's text format, so the project's parser reads it exactly as it reads a real VLM.

How it judges:
  * perception is learned: PerceptionNet labels every pixel with background, one of the 18 object kinds,
    or an unclear blob of a colour; pixels of one colour that touch form one object, whose kind is the
    class with the largest summed probability over its pixels;
  * the prompt is read with the world's grammar (world.parse_prompt) and compared symbolically with what
    was seen: which seen objects the prompt asks for, which are surplus, of a wrong attribute, unrelated,
    unclear, misplaced; which asked-for objects are missing.
The evaluator (evaluator.py) is never called: its hand-written colour rules and shape test are not used
here, so when the two agree it is because both read the image correctly.

Scores follow the templates' bands: global 0.75..1.0 when the image satisfies a prompt with layout intent
and -0.6..-1.0 when it does not; the non-spatial control (no layout intent) stays in the neutral band,
+0.3 / -0.3. Regions: 0.75..1.0 for an asked-for object, 0.0 for background or a misplaced one, -0.6 for
a surplus copy, -0.7 for an unrecognisable blob (severe artifact), -0.8 for an unrelated object, -1.0
for a wrong attribute where the prompt is explicit.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..judging.protocols import JudgeParams, JudgeReply
from . import world
from .components import component_stats, label_classes

MIN_OBJECT_AREA = 8          # pixels at 32x32: smaller coloured specks are noise to the judge
UNCLEAR_SHARE = 0.6          # an object whose best shape holds less of its probability mass is unclear


@dataclass(frozen=True)
class Seen:
    index: int                            # component label (1-based) in Perceived.labels
    color: str
    shape: Optional[str]                  # None: an unclear blob
    area: int
    box: Tuple[int, int, int, int]
    centroid: Tuple[float, float]
    confidence: float                     # mean probability of the chosen class over the object's pixels

    @property
    def obj(self) -> Optional[world.Obj]:
        return None if self.shape is None else world.Obj(self.color, self.shape)

    def name(self) -> str:
        return f"{self.color} {self.shape}" if self.shape else f"unclear {self.color} blob"


@dataclass
class Perceived:
    objects: List[Seen]                   # objects of at least MIN_OBJECT_AREA pixels
    specks: List[Seen]
    labels: np.ndarray                    # (H, W) component labels, 0 background
    size: Tuple[int, int]                 # (H, W) of the analysed (32x32) image
    scale: Tuple[float, float]            # (sx, sy): original image pixels per analysed pixel


# ----------------------------------------------------------------------------------------- perception


class Perception:
    """PerceptionNet + grouping into objects, with a small cache (the pipeline asks several questions
    about one image: verification per box, regions, global)."""

    def __init__(self, net, cache_size: int = 4096):
        import torch

        self.net = net.eval()
        self.torch = torch
        self._cache: "OrderedDict[str, Perceived]" = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @staticmethod
    def prepare(image: Any) -> Tuple[np.ndarray, Tuple[float, float]]:
        """Any RGB image -> (32x32x3 uint8, scale). Other sizes are resized (bilinear)."""
        from PIL import Image

        if isinstance(image, np.ndarray):
            arr = world.to_array(image)
            pil = None
        else:
            pil = image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
            arr = np.asarray(pil)
        h, w = arr.shape[:2]
        if (h, w) == (world.CANVAS, world.CANVAS):
            return np.ascontiguousarray(arr, dtype=np.uint8), (1.0, 1.0)
        pil = pil or Image.fromarray(arr)
        small = np.asarray(pil.resize((world.CANVAS, world.CANVAS), Image.BILINEAR), dtype=np.uint8)
        return small, (w / world.CANVAS, h / world.CANVAS)

    def __call__(self, images: Sequence[Any]) -> List[Perceived]:
        prepared = [self.prepare(im) for im in images]
        keys = [hashlib.sha1(a.tobytes()).hexdigest() + f"{s}" for a, s in prepared]
        out: List[Optional[Perceived]] = []
        todo: List[int] = []
        with self._lock:
            for i, k in enumerate(keys):
                hit = self._cache.get(k)
                if hit is not None:
                    self._cache.move_to_end(k)
                out.append(hit)
                if hit is None:
                    todo.append(i)
        if todo:
            torch = self.torch
            x = torch.from_numpy(np.stack([prepared[i][0] for i in todo])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            with torch.no_grad():
                probs = torch.softmax(self.net(x), dim=1).numpy()
            for j, i in enumerate(todo):
                p = _group(probs[j], prepared[i][1])
                out[i] = p
                with self._lock:
                    self._cache[keys[i]] = p
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        return out  # type: ignore[return-value]


def _group(probs: np.ndarray, scale: Tuple[float, float]) -> Perceived:
    """(K, H, W) class probabilities -> objects: 4-connected pixels of one colour, kind by summed mass."""
    from .nets import NUM_CLASSES, class_meaning

    k, h, w = probs.shape
    cls = probs.argmax(0)
    nshape = len(world.SHAPES)
    colour_of = np.zeros(k, dtype=np.int64)          # 1-based colour of each class, 0 for background
    for c in range(1, k):
        colour_of[c] = world.COLOR_NAMES.index(class_meaning(c)[0]) + 1
    colours = colour_of[cls]
    labels, n = label_classes(colours)
    objects, specks = [], []
    if n:
        st = component_stats(labels, n)
        flat = labels.ravel()
        # per component and class: the summed probability over the component's pixels
        mass = np.stack([np.bincount(flat, weights=probs[c].ravel(), minlength=n + 1)[1:] for c in range(k)], 1)
        present, first = np.unique(flat, return_index=True)
        comp_colour = np.zeros(n, dtype=np.int64)        # colour index of components 1..n
        fg = present > 0                                  # (no background label when objects fill the image)
        comp_colour[present[fg] - 1] = colours.ravel()[first[fg]] - 1
        for i in range(n):
            ci = int(comp_colour[i])
            # this colour's three shapes and its blob class
            idx = [1 + ci * nshape + s for s in range(nshape)] + [NUM_CLASSES + ci]
            m = mass[i, idx]
            best = int(m.argmax())
            share = float(m[best] / max(m.sum(), 1e-9))
            shape = world.SHAPES[best] if best < nshape and share >= UNCLEAR_SHARE else None
            area = int(st["area"][i])
            x0, y0, x1, y1 = (int(v) for v in st["box"][i])
            seen = Seen(i + 1, world.COLOR_NAMES[ci], shape, area, (x0, y0, x1, y1),
                        (float(st["centroid"][i][0]), float(st["centroid"][i][1])), float(m[best] / area))
            (objects if area >= MIN_OBJECT_AREA else specks).append(seen)
    return Perceived(objects, specks, labels, (h, w), scale)


# ------------------------------------------------------------------------------------------- analysis


@dataclass
class Analysis:
    """The symbolic comparison of what was seen with what the prompt asks for."""

    spec: world.PromptSpec
    roles: Dict[int, str] = field(default_factory=dict)      # component index -> role
    missing: List[world.Obj] = field(default_factory=list)
    relation_ok: Optional[bool] = None

    @property
    def ok(self) -> bool:
        return (not self.missing and all(r == "match" for r in self.roles.values())
                and self.relation_ok is not False)

    def problems(self) -> List[str]:
        counts = Counter(self.roles.values())
        out = []
        if self.missing:
            out.append("missing " + ", ".join(o.phrase() for o in self.missing))
        for role, words in (("surplus", "too many"), ("wrong", "wrong attribute"), ("unrelated", "unrelated object"),
                            ("unclear", "unrecognisable blob"), ("misplaced", "wrong arrangement")):
            if counts.get(role):
                out.append(f"{words} ({counts[role]})")
        return out


def analyse(seen: Perceived, spec: world.PromptSpec) -> Analysis:
    a = Analysis(spec)
    want = Counter(spec.objects)
    colours = {o.color for o in spec.objects}
    shapes = {o.shape for o in spec.objects}
    by_kind: Dict[world.Obj, List[Seen]] = {}
    for s in seen.objects:
        if s.obj is None:
            a.roles[s.index] = "unclear"
        else:
            by_kind.setdefault(s.obj, []).append(s)
    matched: Dict[world.Obj, List[Seen]] = {}
    for kind, group in by_kind.items():
        group = sorted(group, key=lambda s: -s.area)
        n = want.get(kind, 0)
        for j, s in enumerate(group):
            if j < n:
                a.roles[s.index] = "match"
                matched.setdefault(kind, []).append(s)
            elif n > 0:
                a.roles[s.index] = "surplus"
            elif kind.color in colours or kind.shape in shapes:
                a.roles[s.index] = "wrong"
            else:
                a.roles[s.index] = "unrelated"
    for kind, n in want.items():
        a.missing += [kind] * max(0, n - len(matched.get(kind, [])))
    if spec.relation is not None:
        first, second = spec.ordered
        if matched.get(first) and matched.get(second):
            sa, sb = matched[first][0], matched[second][0]
            a.relation_ok = world.relation_holds(sa.centroid, sb.centroid, spec.relation)
            if not a.relation_ok:
                a.roles[sa.index] = a.roles[sb.index] = "misplaced"
    return a


# ------------------------------------------------------------------------------------- instructions

_PROMPT_LINE = re.compile(r"^[ \t]*Prompt:[ \t]*(.*?)[ \t]*$", re.M)
_REGION_LINE = re.compile(r"^[ \t]*Region[ \t]+(\d+)[ \t]*:[ \t]*box[ \t]*\[([^\]]*)\]", re.M | re.I)


class InstructionError(ValueError):
    """An instruction that breaks the contract of judging/protocols.py; the message says what is missing."""


@dataclass(frozen=True)
class Instruction:
    kind: str                                       # global | sample | regions | verify
    prompt: str
    regions: Tuple[Tuple[int, Tuple[float, float, float, float]], ...]


def read_instruction(text: str) -> Instruction:
    m = _PROMPT_LINE.search(text)
    if not m or not m.group(1):
        raise InstructionError("the instruction has no 'Prompt: <text>' line (see judging/protocols.py)")
    regions = []
    for rm in _REGION_LINE.finditer(text):
        try:
            coords = tuple(float(v) for v in rm.group(2).split(","))
        except ValueError:
            raise InstructionError(f"region {rm.group(1)}: box [{rm.group(2)}] is not four numbers") from None
        if len(coords) != 4:
            raise InstructionError(f"region {rm.group(1)}: box [{rm.group(2)}] is not four numbers")
        regions.append((int(rm.group(1)), coords))
    if re.search(r"\bAnswer:", text):
        kind = "verify"
    elif re.search(r"Region ID", text, re.I) or regions:
        kind = "regions"
    elif re.search(r"\blayout\b", text, re.I):
        kind = "global"
    else:
        kind = "sample"
    if kind in ("verify", "regions") and not regions:
        raise InstructionError(f"a {kind} instruction has no 'Region <i>: box [x0, y0, x1, y1]' line")
    return Instruction(kind, m.group(1), tuple(regions))


# ------------------------------------------------------------------------------------------ answers

REGION_SCORES = {"misplaced": 0.0, "surplus": -0.6, "unclear": -0.7, "unrelated": -0.8, "wrong": -1.0}


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _whole_image(seen: Perceived, spec: Optional[world.PromptSpec], kind: str) -> Tuple[float, str]:
    if spec is None:
        return 0.0, "the prompt is outside what this judge understands, so no judgment of its layout"
    a = analyse(seen, spec)
    matched = [s for s in seen.objects if a.roles.get(s.index) == "match"]
    quality = float(np.mean([s.confidence for s in matched])) if matched else 0.0
    neutral = kind == "global" and not spec.layout_intent
    if a.ok:
        if neutral:
            return 0.3, "the prompt states no layout; the objects it names are all there"
        return round(0.5 + 0.5 * quality, 2), "every object the prompt asks for is there" + (
            f", {spec.ordered[0].phrase()} {spec.relation} {spec.ordered[1].phrase()}" if spec.relation else "")
    problems = a.problems()
    if neutral:
        return -0.3, "the prompt states no layout; " + "; ".join(problems)
    return max(-1.0, -0.5 - 0.1 * len(problems) - (0.1 if a.missing else 0.0)), "; ".join(problems)


def _region_component(seen: Perceived, box: Sequence[float]) -> Optional[Seen]:
    """The object (or speck) covering most of a box, if it covers a fair part of it or of itself."""
    sx, sy = seen.scale
    h, w = seen.size
    x0 = int(np.clip(np.floor(box[0] / sx), 0, w))
    y0 = int(np.clip(np.floor(box[1] / sy), 0, h))
    x1 = int(np.clip(np.ceil(box[2] / sx), 0, w))
    y1 = int(np.clip(np.ceil(box[3] / sy), 0, h))
    if x1 <= x0 or y1 <= y0:
        return None
    inside = seen.labels[y0:y1, x0:x1]
    counts = np.bincount(inside.ravel(), minlength=1)
    counts[0] = 0
    if counts.sum() == 0:
        return None
    best = int(counts.argmax())
    candidates = {s.index: s for s in (*seen.objects, *seen.specks)}
    s = candidates.get(best)
    if s is None:
        return None
    box_area = (x1 - x0) * (y1 - y0)
    if counts[best] < 0.2 * box_area and counts[best] < 0.3 * s.area:
        return None
    return s


def _region_score(seen: Perceived, spec: Optional[world.PromptSpec], box) -> Tuple[str, float, str]:
    s = _region_component(seen, box)
    if s is None:
        return "background", 0.0, "no object in this region"
    if s.area < MIN_OBJECT_AREA:
        return f"small {s.color} speck", -0.6, "a stray speck of colour, a drawing artifact"
    if spec is None:
        return s.name(), 0.0, "the prompt is outside what this judge understands"
    role = analyse(seen, spec).roles.get(s.index, "unrelated")
    if role == "match":
        return s.name(), round(0.5 + 0.5 * s.confidence, 2), "an object the prompt asks for, clearly drawn"
    reasons = {"misplaced": "the right object, but not where the prompt puts it",
               "surplus": "one more copy than the prompt asks for",
               "unclear": "an unrecognisable shape: a severe artifact",
               "unrelated": "an object the prompt does not mention",
               "wrong": "an object with an attribute the prompt contradicts"}
    return s.name(), REGION_SCORES[role], reasons[role]


def _prompt_noun(prompt: str, s: Seen) -> Optional[str]:
    """The word the prompt uses for the seen object (its shape noun, or the noun of 'a round red object')."""
    words = re.findall(r"[a-z]+", prompt.lower())
    if s.shape:
        for wd in (world.PLURALS[s.shape], s.shape):
            if wd in words:
                return wd
        adj = world.ADJECTIVES[s.shape]
        for i, wd in enumerate(words[:-2]):
            if wd == adj and words[i + 2] in ("object", "objects", "shape", "shapes"):
                return words[i + 2]
    if s.color in words:   # the colour is named: point at the noun that follows it
        i = words.index(s.color)
        if i + 1 < len(words):
            return words[i + 1]
    return None


def _verify(seen: Perceived, spec: Optional[world.PromptSpec], prompt: str, box) -> Tuple[bool, Optional[str]]:
    s = _region_component(seen, box)
    if s is None or s.area < MIN_OBJECT_AREA:
        return False, None
    if spec is not None:
        role = analyse(seen, spec).roles.get(s.index, "unrelated")
        if role == "unrelated":
            return False, None
    noun = _prompt_noun(prompt, s)
    return (noun is not None), noun


def _truncate(text: str, max_new_tokens: int) -> str:
    """What a decoder would have emitted within its token budget (one word or newline ~ one token)."""
    pieces = re.findall(r"[^\S\n]*\S+|\n", text)
    return "".join(pieces[:max_new_tokens])


def _think(seen: Perceived, spec: Optional[world.PromptSpec]) -> str:
    parts = [f"{s.name()} at ({s.centroid[0]:.1f}, {s.centroid[1]:.1f}), {s.area} px" for s in seen.objects]
    asked = ", ".join(o.phrase() for o in spec.objects) if spec else "something outside my grammar"
    return f"I see: {'; '.join(parts) or 'nothing'}. The prompt asks for: {asked}."


class ToyUnderstanding:
    """image + instruction -> judge text, for any number of requests at once."""

    def __init__(self, perception_net):
        self.perception = Perception(perception_net)

    def answer(self, images: Sequence[Any], instructions: Sequence[str], params: JudgeParams = JudgeParams()) -> List[JudgeReply]:
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        parsed = [read_instruction(t) for t in instructions]
        seen_all = self.perception(images)
        replies = []
        for ins, seen in zip(parsed, seen_all):
            try:
                spec: Optional[world.PromptSpec] = world.parse_prompt(ins.prompt)
            except world.PromptParseError:
                spec = None
            if ins.kind in ("global", "sample"):
                score, reason = _whole_image(seen, spec, ins.kind)
                text = f"Score: {_fmt(score)}\nReason: {reason}."
            elif ins.kind == "regions":
                blocks = []
                for rid, box in ins.regions:
                    obj, score, reason = _region_score(seen, spec, box)
                    blocks.append(f"Region ID: {rid}\nObject: {obj}\nScore: {_fmt(score)}\nReason: {reason}.")
                text = "\n\n".join(blocks)
            else:
                yes, noun = _verify(seen, spec, ins.prompt, ins.regions[0][1])
                text = f"Answer: {'yes' if yes else 'no'}\nObject: {noun if yes else 'none'}"
            think = _think(seen, spec) if params.think else ""
            replies.append(JudgeReply(text=_truncate(text, params.max_new_tokens), think_text=think))
        return replies
