"""The toy world: flat-coloured shapes on a plain canvas, a prompt grammar with T2I-CompBench-like
categories, deterministic prompt sets, and a renderer of ground-truth images.

Objects are one of SHAPES in one of COLORS (18 kinds). Prompts name one to three objects:

  color        a red circle and a blue square                 (two objects of different colours)
  shape        a round red object and a triangular blue object (two objects of different shapes)
  spatial      a red circle to the left of a blue square       (left of / right of / above / below)
  numeracy     two green triangles / one red circle and two blue squares   (one to three objects)
  non-spatial  a red circle together with a blue square        (a control: no layout intent)

`parse_prompt` turns any prompt of the grammar back into a `PromptSpec` (the multiset of objects, and the
relation for spatial prompts). Both the rule-based evaluator and the toy judge read prompts through it: the
text is the world's grammar; what each of them *sees* in an image is its own business (hand-written
segmentation for the evaluator, a learned network for the judge).

Prompt sets are split by *content* (the multiset of objects and the relation), not by wording: no
composition of the evaluation set appears, in any phrasing or category, in another split. Four splits:
`pretrain` (the compositions the base model's ground-truth renders show), `train` (the prompts of a
self-rewarding round: compositions pretraining never saw), `val` (choosing a round's settings) and `eval`
(the reported benchmark).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

CANVAS = 32
BACKGROUND: Tuple[int, int, int] = (255, 255, 255)
# Well separated in RGB (smallest pairwise distance about 120) and far from the white background,
# so a colour survives the blur and noise of a young generator.
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 50, 190),
    "cyan": (40, 190, 200),
}
COLOR_NAMES: Tuple[str, ...] = tuple(COLORS)
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
ADJECTIVES = {"circle": "round", "square": "square", "triangle": "triangular"}
NUMBERS = {1: "one", 2: "two", 3: "three"}
CATEGORIES: Tuple[str, ...] = ("color", "shape", "spatial", "numeracy", "non-spatial")
RELATIONS: Tuple[str, ...] = ("left", "right", "above", "below")
RELATION_WORDS = {"left": ("to the left of", "on the left of"), "right": ("to the right of", "on the right of"),
                  "above": ("above",), "below": ("below",)}
NON_SPATIAL_LINKS: Tuple[str, ...] = ("together with", "along with", "as well as")

# Object sizes (bounding-box side, pixels) and the gap kept between objects in ground-truth renders.
MIN_SIZE, MAX_SIZE = 8, 13
GAP = 2

# Split sizes per category and the seed of the built-in prompt sets.
PROMPT_SEED = 20240917
SPLIT_SIZES = {"eval": 40, "val": 40, "train": 400, "pretrain": 400}
SPLITS: Tuple[str, ...] = ("train", "val", "eval", "pretrain")
# Share of contents assigned to each split, in this order, within each difficulty stratum (the rest go to
# pretrain). eval and val come first, so adding the train/pretrain cut left them exactly as they were.
_SPLIT_SHARES = (("eval", 0.3), ("val", 0.2), ("train", 0.25))


@dataclass(frozen=True, order=True)
class Obj:
    color: str
    shape: str

    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


ALL_OBJECTS: Tuple[Obj, ...] = tuple(Obj(c, s) for c in COLOR_NAMES for s in SHAPES)
# Class index of an object kind for dense labels: 0 is background, 1 + colour * 3 + shape after that.
NUM_CLASSES = 1 + len(ALL_OBJECTS)


def class_index(obj: Obj) -> int:
    return 1 + COLOR_NAMES.index(obj.color) * len(SHAPES) + SHAPES.index(obj.shape)


def class_object(index: int) -> Optional[Obj]:
    return None if index <= 0 else ALL_OBJECTS[index - 1]


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for: objects (a sorted multiset) and, for spatial prompts, `objects_in_order[0]`
    `relation` `objects_in_order[1]`."""

    objects: Tuple[Obj, ...]
    relation: Optional[str] = None
    ordered: Tuple[Obj, ...] = ()
    layout_intent: bool = True      # False for the non-spatial control ("together with")
    # the objects in the order the prompt names them (with repeats); wording, not content
    mentioned: Tuple[Obj, ...] = field(default=(), compare=False)

    def content_key(self) -> str:
        """The composition, independent of wording and of which side a relation is stated from."""
        objs = ",".join(o.phrase() for o in self.objects)
        if self.relation is None:
            return objs
        a, b = self.ordered
        rel = self.relation
        # "A left of B" is "B right of A": state it from the smaller object, so both spellings agree
        if (a, b) > (b, a):
            a, b, rel = b, a, {"left": "right", "right": "left", "above": "below", "below": "above"}[rel]
        return f"{objs}|{a.phrase()} {rel} {b.phrase()}"


class PromptParseError(ValueError):
    """A prompt that is not in the toy world's grammar; the message quotes it."""


# ------------------------------------------------------------------------------------------- parsing

_COLOR_RE = "|".join(COLOR_NAMES)
_SHAPE_RE = "circle|square|triangle"
_ADJ_RE = "round|square|triangular"
_ADJ_TO_SHAPE = {v: k for k, v in ADJECTIVES.items()}
_OBJECT_RE = (rf"(?P<{{p}}num>a|an|one|two|three)\s+(?:(?P<{{p}}adj>{_ADJ_RE})\s+(?P<{{p}}acol>{_COLOR_RE})\s+"
              rf"(?:objects?|shapes?)|(?P<{{p}}col>{_COLOR_RE})\s+(?P<{{p}}shape>{_SHAPE_RE})s?)")
_REL_RE = "|".join(re.escape(w) for words in RELATION_WORDS.values() for w in words)
_LINK_RE = "|".join(re.escape(w) for w in NON_SPATIAL_LINKS)
_PROMPT_RE = re.compile(
    rf"^\s*{_OBJECT_RE.format(p='a')}(?:\s+(?P<link>and|{_REL_RE}|{_LINK_RE})\s+{_OBJECT_RE.format(p='b')})?\s*\.?\s*$",
    re.I)
_WORD_NUM = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}


def _group_obj(m: "re.Match[str]", p: str) -> Tuple[Obj, int]:
    n = _WORD_NUM[m.group(f"{p}num").lower()]
    if m.group(f"{p}adj"):
        obj = Obj(m.group(f"{p}acol").lower(), _ADJ_TO_SHAPE[m.group(f"{p}adj").lower()])
    else:
        obj = Obj(m.group(f"{p}col").lower(), m.group(f"{p}shape").lower())
    return obj, n


@lru_cache(maxsize=65536)
def parse_prompt(text: str) -> PromptSpec:
    """A prompt of the grammar -> its PromptSpec; anything else raises PromptParseError."""
    m = _PROMPT_RE.match(" ".join(str(text).split()))
    if not m:
        raise PromptParseError(f"prompt {text!r} is not in the toy world's grammar "
                               "(e.g. 'a red circle to the left of a blue square', 'two green triangles')")
    a, na = _group_obj(m, "a")
    objects: List[Obj] = [a] * na
    relation, ordered, intent = None, (), True
    link = (m.group("link") or "").lower()
    if link:
        b, nb = _group_obj(m, "b")
        objects += [b] * nb
        for rel, words in RELATION_WORDS.items():
            if link in words:
                if na != 1 or nb != 1:
                    raise PromptParseError(f"prompt {text!r}: a spatial relation links exactly one object to one")
                relation, ordered = rel, (a, b)
        if link in NON_SPATIAL_LINKS:
            intent = False
    if len(objects) > 3:
        raise PromptParseError(f"prompt {text!r} asks for {len(objects)} objects; the toy world draws 1 to 3")
    return PromptSpec(objects=tuple(sorted(objects)), relation=relation, ordered=ordered, layout_intent=intent,
                      mentioned=tuple(objects))


# ------------------------------------------------------------------------------------------ phrasing


def _a(obj: Obj) -> str:
    return f"a {obj.color} {obj.shape}"


def _counted(obj: Obj, n: int) -> str:
    return f"{NUMBERS[n]} {obj.color} {obj.shape if n == 1 else PLURALS[obj.shape]}"


def phrase(category: str, objs: Sequence[Obj], counts: Sequence[int] = (), relation: Optional[str] = None,
           variant: int = 0) -> str:
    """The prompt text of a composition; `variant` picks among equivalent wordings."""
    if category == "color":
        return f"{_a(objs[0])} and {_a(objs[1])}"
    if category == "shape":
        noun = ("object", "shape")[variant % 2]
        return " and ".join(f"a {ADJECTIVES[o.shape]} {o.color} {noun}" for o in objs)
    if category == "spatial":
        words = RELATION_WORDS[relation]  # type: ignore[index]
        return f"{_a(objs[0])} {words[variant % len(words)]} {_a(objs[1])}"
    if category == "numeracy":
        return " and ".join(_counted(o, n) for o, n in zip(objs, counts))
    if category == "non-spatial":
        return f"{_a(objs[0])} {NON_SPATIAL_LINKS[variant % len(NON_SPATIAL_LINKS)]} {_a(objs[1])}"
    raise ValueError(f"unknown toy category {category!r}; categories are {CATEGORIES}")


def _compositions(category: str) -> List[Tuple[Tuple[Obj, ...], Tuple[int, ...], Optional[str]]]:
    """Every composition of a category, as (objects, counts, relation), each content once."""
    out = []
    pairs = list(itertools.combinations(ALL_OBJECTS, 2))
    if category == "color":
        out = [((a, b), (1, 1), None) for a, b in pairs if a.color != b.color]
    elif category == "shape":
        out = [((a, b), (1, 1), None) for a, b in pairs if a.shape != b.shape]
    elif category == "non-spatial":
        out = [((a, b), (1, 1), None) for a, b in pairs]
    elif category == "spatial":
        # "a left of b" and "b right of a" are one content: keep left/above with either order
        out = [((a, b), (1, 1), rel) for a, b in itertools.permutations(ALL_OBJECTS, 2) for rel in ("left", "above")]
    elif category == "numeracy":
        out = [((o,), (n,), None) for o in ALL_OBJECTS for n in (1, 2, 3)]
        out += [((a, b), (na, nb), None) for a, b in pairs for na, nb in ((1, 1), (1, 2), (2, 1))]
    else:
        raise ValueError(f"unknown toy category {category!r}; categories are {CATEGORIES}")
    return out


def _unit(seed: int, *parts: object) -> float:
    """A number in [0, 1) that depends only on the seed and the parts (stable across Python versions)."""
    h = hashlib.sha256("/".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") / 2.0 ** 64


# Colours a young generator confuses most (blue/purple, green/cyan): a pair of them is harder to bind.
_COOL = frozenset({"blue", "purple", "cyan", "green"})


def _stratum(spec: PromptSpec) -> Tuple:
    """What makes a composition hard, so that every split gets its share of each kind."""
    colours = [o.color for o in spec.objects]
    distinct = sorted(set(spec.objects))
    return (len(spec.objects), len(distinct), spec.relation is not None,
            len({o.color for o in distinct}) < len(distinct),          # two kinds share a colour
            len({o.shape for o in distinct}) < len(distinct),          # two kinds share a shape
            sum(c in _COOL for c in set(colours)) >= 2)


@lru_cache(maxsize=4)
def _split_table(seed: int) -> Dict[str, str]:
    """content key -> split. Contents are grouped by difficulty stratum; within a stratum they are ranked by
    a seeded hash and the first 30% go to eval, the next 20% to val, the next 25% to train (self-training
    prompts), the rest to pretrain. Stratifying keeps the validation split (used to choose a round's
    settings) as hard as the evaluation split."""
    strata: Dict[Tuple, set] = {}
    for category in CATEGORIES:
        for comp in _compositions(category):
            spec = _comp_spec(*comp)
            strata.setdefault(_stratum(spec), set()).add(spec.content_key())
    table: Dict[str, str] = {}
    for keys in strata.values():
        ranked = sorted(keys, key=lambda k: _unit(seed, "split", k))
        n = len(ranked)
        for i, k in enumerate(ranked):
            acc, split = 0.0, "pretrain"
            for name, share in _SPLIT_SHARES:
                acc += share
                if i < round(acc * n):
                    split = name
                    break
            table[k] = split
    return table


def content_split(key: str, seed: int = PROMPT_SEED) -> str:
    """The split a composition (PromptSpec.content_key) belongs to."""
    try:
        return _split_table(seed)[key]
    except KeyError:
        raise ValueError(f"{key!r} is not the content key of a toy composition") from None


@dataclass(frozen=True)
class ToyPrompt:
    text: str
    category: str
    spec: PromptSpec


def _comp_spec(objs, counts, relation) -> PromptSpec:
    spec_objs = tuple(sorted(o for o, n in zip(objs, counts) for _ in range(n)))
    return PromptSpec(spec_objs, relation, tuple(objs) if relation else ())


def prompt_key(comp) -> str:
    """The content key of a composition (objects, counts, relation)."""
    return _comp_spec(*comp).content_key()


def _wordings(category: str, comp, rng: np.random.Generator) -> List[str]:
    """Every wording of a composition (object order, relation side, phrasing variant), shuffled."""
    objs, counts, relation = comp
    texts = set()
    orders = [(objs, counts, relation)]
    if len(objs) == 2:
        flipped = None if relation is None else {"left": "right", "above": "below"}[relation]
        orders.append((objs[::-1], counts[::-1], flipped))
    for o, c, r in orders:
        for variant in range(6):
            texts.add(phrase(category, o, c, r, variant))
    texts = sorted(texts)
    return [texts[i] for i in rng.permutation(len(texts))]


def split_compositions(split: str, category: str, seed: int = PROMPT_SEED) -> list:
    """The compositions of a category whose content belongs to `split`."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown toy prompt split {split!r}; splits are {', '.join(SPLITS)}")
    return [c for c in _compositions(category) if content_split(prompt_key(c), seed) == split]


@lru_cache(maxsize=16)
def prompt_set(split: str, seed: int = PROMPT_SEED) -> Tuple[ToyPrompt, ...]:
    """The built-in prompt set of a split: up to SPLIT_SIZES[split] distinct prompts per category,
    deterministic in `seed`, whose contents never occur in another split. A category with fewer
    compositions than that in the split repeats a composition in another wording (a different text)."""
    rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 99])
    out: List[ToyPrompt] = []
    for category in CATEGORIES:
        comps = split_compositions(split, category, seed)
        comps = [comps[i] for i in rng.permutation(len(comps))]
        wordings = [_wordings(category, c, rng) for c in comps]
        texts: List[str] = []
        for depth in range(max((len(w) for w in wordings), default=0)):
            for ws in wordings:
                if len(texts) >= SPLIT_SIZES[split]:
                    break
                if depth < len(ws):
                    texts.append(ws[depth])
        out += [ToyPrompt(t, category, parse_prompt(t)) for t in texts]
    return tuple(out)


def toy_prompts(split: str) -> list:
    """The prompt set of a split as `records.Prompt` (what `toy://train|val|eval` resolves to), with the
    categories interleaved round-robin, so that the first N prompts (`prompts.limit`) and every shard
    (index % num_shards) cover all categories rather than the first one alone."""
    from ..records import Prompt

    by_cat: Dict[str, List[ToyPrompt]] = {}
    for p in prompt_set(split):
        by_cat.setdefault(p.category, []).append(p)
    queues = [by_cat[c] for c in CATEGORIES if c in by_cat]
    ordered: List[ToyPrompt] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        ordered += [q[depth] for q in queues if depth < len(q)]
    return [Prompt(id=f"toy-{split}-{i:05d}", text=p.text, category=p.category, index=i)
            for i, p in enumerate(ordered)]


@lru_cache(maxsize=64)
def _split_pool(split: Optional[str], category: str, seed: int = PROMPT_SEED) -> list:
    return _compositions(category) if split is None else split_compositions(split, category, seed)


def random_prompt(rng: np.random.Generator, category: Optional[str] = None, split: Optional[str] = None) -> ToyPrompt:
    """A random prompt in a random wording, of any composition or only of `split`'s (pretraining data)."""
    category = category or CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]
    comps = _split_pool(split, category)
    objs, counts, relation = comps[int(rng.integers(0, len(comps)))]
    if len(objs) == 2 and rng.random() < 0.5:
        objs, counts = objs[::-1], counts[::-1]
        if relation is not None:
            relation = {"left": "right", "above": "below"}[relation]
    text = phrase(category, objs, counts, relation, variant=int(rng.integers(0, 6)))
    return ToyPrompt(text, category, parse_prompt(text))


# ----------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Placed:
    obj: Obj
    x0: int
    y0: int
    size: int

    @property
    def box(self) -> Tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x0 + self.size, self.y0 + self.size)


def shape_mask(shape: str, size: int) -> np.ndarray:
    """(size, size) bool: the pixels whose centres lie inside the shape drawn in a size x size box."""
    c = np.arange(size) + 0.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        r = size / 2.0
        return (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    if shape == "triangle":
        # apex at the top centre, base along the bottom edge
        half = (yy / size) * (size / 2.0)
        return np.abs(xx - size / 2.0) <= half + 1e-9
    raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


def relation_holds(a: Tuple[float, float], b: Tuple[float, float], relation: str, margin: float = 0.0) -> bool:
    """What a relation word means in this world: centroid `a` lies on the `relation` side of centroid `b`
    (left/right/above/below, image y pointing down) along the dominant axis, by more than `margin` pixels."""
    dx, dy = b[0] - a[0], b[1] - a[1]          # from a to b
    if relation == "left":
        return dx > margin and abs(dx) > abs(dy) + margin
    if relation == "right":
        return -dx > margin and abs(dx) > abs(dy) + margin
    if relation == "above":
        return dy > margin and abs(dy) > abs(dx) + margin
    if relation == "below":
        return -dy > margin and abs(dy) > abs(dx) + margin
    raise ValueError(f"unknown relation {relation!r}; relations are {RELATIONS}")


def _centre(p: "Placed") -> Tuple[float, float]:
    return (p.x0 + p.size / 2.0, p.y0 + p.size / 2.0)


def _apart(a: Placed, b: Placed) -> bool:
    return (a.x0 + a.size + GAP <= b.x0 or b.x0 + b.size + GAP <= a.x0 or
            a.y0 + a.size + GAP <= b.y0 or b.y0 + b.size + GAP <= a.y0)


def place(spec: PromptSpec, rng: np.random.Generator, canvas: int = CANVAS, max_tries: int = 500) -> List[Placed]:
    """Random non-overlapping placements of the spec's objects (satisfying its relation, clearly)."""
    objs = list(spec.ordered) if spec.relation else list(spec.objects)
    for _ in range(max_tries):
        placed: List[Placed] = []
        ok = True
        for obj in objs:
            size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
            for _ in range(50):
                p = Placed(obj, int(rng.integers(1, canvas - size)), int(rng.integers(1, canvas - size)), size)
                if all(_apart(p, q) for q in placed):
                    placed.append(p)
                    break
            else:
                ok = False
                break
        if ok and (spec.relation is None or relation_holds(_centre(placed[0]), _centre(placed[1]), spec.relation, margin=2.0)):
            return placed
    raise RuntimeError(f"could not place {[o.phrase() for o in objs]} on a {canvas}x{canvas} canvas")


def draw(placed: Sequence[Placed], canvas: int = CANVAS) -> Tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, labels (H, W) uint8 class indices, 0 = background)."""
    img = np.empty((canvas, canvas, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    labels = np.zeros((canvas, canvas), dtype=np.uint8)
    for p in placed:
        m = shape_mask(p.obj.shape, p.size)
        region = (slice(p.y0, p.y0 + p.size), slice(p.x0, p.x0 + p.size))
        img[region][m] = COLORS[p.obj.color]
        labels[region][m] = class_index(p.obj)
    return img, labels


_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def miscaption(spec: PromptSpec, rng: np.random.Generator) -> PromptSpec:
    """A scene that a caption `spec` describes wrongly in exactly one respect, as web alt-text does: one
    object kind recoloured or reshaped, one instance added or missing, or (spatial) the relation reversed.
    Pretraining renders it under the unchanged caption (see pretrain's `caption_noise`)."""
    kinds = sorted(set(spec.objects))
    count = {k: spec.objects.count(k) for k in kinds}
    edits = ["recolor", "reshape"]
    if spec.relation is not None:
        edits.append("flip")
    else:
        if len(spec.objects) < 3:
            edits.append("add")
        if len(spec.objects) > 1:
            edits.append("drop")
    edit = edits[int(rng.integers(0, len(edits)))]
    if edit == "flip":
        return PromptSpec(spec.objects, _OPPOSITE[spec.relation], spec.ordered, spec.layout_intent)
    kind = kinds[int(rng.integers(0, len(kinds)))]
    if edit in ("add", "drop"):
        count[kind] += 1 if edit == "add" else -1
        objs = tuple(sorted(k for k, n in count.items() for _ in range(n)))
        return PromptSpec(objs, None, (), spec.layout_intent)
    if edit == "recolor":
        others = [c for c in COLOR_NAMES if c != kind.color]
        new = Obj(others[int(rng.integers(0, len(others)))], kind.shape)
    else:
        others = [s for s in SHAPES if s != kind.shape]
        new = Obj(kind.color, others[int(rng.integers(0, len(others)))])
    swap = lambda objs: tuple(new if o == kind else o for o in objs)  # noqa: E731
    return PromptSpec(tuple(sorted(swap(spec.objects))), spec.relation, swap(spec.ordered), spec.layout_intent)


def render(spec: PromptSpec, rng: np.random.Generator, canvas: int = CANVAS) -> Tuple[np.ndarray, np.ndarray, List[Placed]]:
    """A ground-truth image of a prompt spec: (image uint8 HxWx3, labels HxW, placements)."""
    placed = place(spec, rng, canvas)
    img, labels = draw(placed, canvas)
    return img, labels, placed


def render_prompt(text: str, rng: np.random.Generator, canvas: int = CANVAS) -> np.ndarray:
    return render(parse_prompt(text), rng, canvas)[0]


def to_pil(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), "RGB")


def to_array(image) -> np.ndarray:
    """A PIL image or an array -> (H, W, 3) uint8."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got an array of shape {arr.shape}")
    return arr.astype(np.uint8, copy=False)
