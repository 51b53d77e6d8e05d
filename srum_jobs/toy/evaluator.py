"""The toy benchmark: a rule-based evaluator that decides whether an image satisfies its prompt.

It is the world's ground truth, the way GenEval uses a detector, and it never sees the judge. Everything
in it is hand-written:
  1. colour segmentation: each pixel takes the nearest palette colour (or the background) if it lies
     within COLOR_TOLERANCE of it, else it is unknown;
  2. 4-connected components of equal colour; components smaller than MIN_AREA pixels are specks;
  3. a shape test on each component's mask: the ideal circle, square and upright triangle of the blob's
     area are placed on its centroid, and the one that overlaps it best (IoU) names it, if it fits well
     and clearly better than the others; anything else (smeared, fused, stretched, bitten) is not
     recognisable;
  4. positions from centroids.
An image satisfies its prompt when the objects found are exactly the prompt's objects (the multiset of
colour + shape: nothing missing, nothing extra, no unrecognisable blob) and, for spatial prompts, the
first object's centroid lies on the stated side of the second's along the dominant axis.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .components import component_stats, label_classes
from .world import BACKGROUND, COLOR_NAMES, COLORS, Obj, PromptSpec, parse_prompt, relation_holds, to_array

COLOR_TOLERANCE = 60.0       # RGB distance from the nearest background-colour blend
MIN_AREA = 10                # pixels; the smallest drawn object (a triangle of side 8) has about 30
_BG = np.array(BACKGROUND, dtype=np.float32)
_DIRS = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)[None] - _BG      # (1, K, 3)
_DIR_NORM2 = (_DIRS ** 2).sum(-1)                                                  # (1, K)


@dataclass(frozen=True)
class Found:
    color: str
    shape: Optional[str]         # None: not recognisable as any shape
    area: int
    box: Tuple[int, int, int, int]
    centroid: Tuple[float, float]

    @property
    def obj(self) -> Optional[Obj]:
        return None if self.shape is None else Obj(self.color, self.shape)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    found: Tuple[Found, ...] = field(default_factory=tuple)


def segment_colors(img: np.ndarray) -> np.ndarray:
    """(H, W) int: 0 background or unknown, 1 + colour index for palette colours.

    A pixel is read as a blend `bg + a * (colour - bg)` of the background with each palette colour: it
    takes the colour that explains it with the smallest residual, if that residual is within
    COLOR_TOLERANCE and the blend is mostly colour (a > 0.5). So a soft edge is cut where it is half
    object, half background, which keeps a blurred shape's geometry."""
    p = img.astype(np.float32).reshape(-1, 1, 3) - _BG                       # (P, 1, 3)
    a = np.clip((p * _DIRS).sum(-1) / _DIR_NORM2, 0.0, 1.0)                  # (P, K)
    resid = np.sqrt(((p - a[..., None] * _DIRS) ** 2).sum(-1))               # (P, K)
    best = resid.argmin(-1)
    rows = np.arange(len(best))
    ok = (resid[rows, best] <= COLOR_TOLERANCE) & (a[rows, best] > 0.5)
    return np.where(ok, best + 1, 0).astype(np.int64).reshape(img.shape[:2])


SHAPE_MIN_IOU = 0.75         # the best-fitting ideal shape must cover the blob this well...
SHAPE_MARGIN = 0.03          # ...and fit clearly better than the second best


def shape_fits(mask: np.ndarray) -> Dict[str, float]:
    """IoU of a blob with each ideal shape placed by the blob's moments: same area, centred on the blob's
    centroid (a triangle's centroid sits a third of its height above its base). Moments are robust to
    the spurs and chipped corners of generated shapes; a perfect render fits its own shape with IoU 1."""
    m = np.pad(np.asarray(mask, dtype=bool), 4)
    ys, xs = np.nonzero(m)
    area = float(len(ys))
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    yy, xx = np.meshgrid(np.arange(m.shape[0]) + 0.5, np.arange(m.shape[1]) + 0.5, indexing="ij")
    side, radius, height = np.sqrt(area), np.sqrt(area / np.pi), np.sqrt(2.0 * area)
    top = cy - 2.0 * height / 3.0
    ideal = {
        "circle": (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2,
        "square": (np.abs(xx - cx) <= side / 2) & (np.abs(yy - cy) <= side / 2),
        "triangle": (yy >= top) & (yy <= cy + height / 3.0) & (np.abs(xx - cx) <= (yy - top) / 2.0),
    }
    return {k: float((m & t).sum() / (m | t).sum()) for k, t in ideal.items()}


def classify_shape(mask: np.ndarray) -> Optional[str]:
    """A blob's mask -> circle | square | triangle, or None when no ideal shape fits it clearly."""
    fits = shape_fits(mask)
    ranked = sorted(fits.items(), key=lambda kv: -kv[1])
    (best, iou), (_, second) = ranked[0], ranked[1]
    return best if iou >= SHAPE_MIN_IOU and iou - second >= SHAPE_MARGIN else None


def find_objects(image: Any) -> List[Found]:
    img = to_array(image)
    classes = segment_colors(img)
    labels, n = label_classes(classes)
    if n == 0:
        return []
    st = component_stats(labels, n)
    out = []
    for i in range(n):
        area = int(st["area"][i])
        if area < MIN_AREA:
            continue
        x0, y0, x1, y1 = (int(v) for v in st["box"][i])
        mask = labels[y0:y1, x0:x1] == i + 1
        color = COLOR_NAMES[int(classes[labels == i + 1][0]) - 1]
        out.append(Found(color, classify_shape(mask), area, (x0, y0, x1, y1),
                         (float(st["centroid"][i][0]), float(st["centroid"][i][1]))))
    return out


def judge_found(found: Sequence[Found], spec: PromptSpec) -> Verdict:
    unknown = [f for f in found if f.shape is None]
    if unknown:
        return Verdict(False, f"{len(unknown)} unrecognisable {unknown[0].color} blob(s)", tuple(found))
    got = Counter(f.obj for f in found)
    want = Counter(spec.objects)
    if got != want:
        missing = want - got
        extra = got - want
        parts = []
        if missing:
            parts.append("missing " + ", ".join(o.phrase() for o in missing.elements()))
        if extra:
            parts.append("extra " + ", ".join(o.phrase() for o in extra.elements()))
        return Verdict(False, "; ".join(parts), tuple(found))
    if spec.relation is not None:
        a, b = spec.ordered
        fa = next(f for f in found if f.obj == a)
        fb = next(f for f in found if f.obj == b)
        if not relation_holds(fa.centroid, fb.centroid, spec.relation):
            return Verdict(False, f"{a.phrase()} is not {spec.relation} of {b.phrase()}", tuple(found))
    return Verdict(True, "matches the prompt", tuple(found))


def verdict(image: Any, prompt: str) -> Verdict:
    """The full decision with its reason and what was found."""
    return judge_found(find_objects(image), parse_prompt(prompt))


def evaluate_image(image: Any, prompt: str) -> bool:
    """Does the image satisfy the prompt? (PromptParseError for a prompt outside the toy grammar.)"""
    return verdict(image, prompt).ok


def score_images(images: Sequence[Any], prompts: Sequence[str], categories: Sequence[str]) -> Dict[str, Any]:
    """Accuracy overall and per category, in [0, 1]."""
    if not (len(images) == len(prompts) == len(categories)):
        raise ValueError(f"{len(images)} images, {len(prompts)} prompts, {len(categories)} categories")
    per: Dict[str, List[bool]] = {}
    for img, p, c in zip(images, prompts, categories):
        per.setdefault(c, []).append(evaluate_image(img, p))
    allv = [v for vs in per.values() for v in vs]
    return {"overall": float(np.mean(allv)) if allv else float("nan"),
            "per_category": {c: float(np.mean(v)) for c, v in sorted(per.items())}}
