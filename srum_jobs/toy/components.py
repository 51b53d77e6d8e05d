"""Connected components, and `ComponentsBoxer`: the toy world's stand-in for SAM.

`label_runs` is a generic labelling of a pixel graph given which pixels are foreground and which
horizontal/vertical neighbours join. It works on runs (maximal horizontally joined stretches of a row),
so its cost grows with the number of runs, not pixels: a 1024x1024 flat-coloured image has few runs per
row. Run-to-run joins across rows are merged by min-label propagation with pointer jumping in numpy.

`ComponentsBoxer` (BoxerBackend, judging/protocols.py) proposes one box per region of nearly constant
colour that differs from the background (the median colour of the image border): neighbouring pixels join
when their colours differ by less than `tolerance`, so a soft gradient stays one region while the sharp
edge between two flat colours splits two touching objects.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ..judging.protocols import BoxOptions, BoxProposal


def label_runs(fg: np.ndarray, hjoin: np.ndarray, vjoin: np.ndarray) -> Tuple[np.ndarray, int]:
    """Label connected foreground pixels.

    fg (H, W) bool; hjoin (H, W-1) bool: pixel (y, x) joins (y, x+1); vjoin (H-1, W) bool: (y, x) joins
    (y+1, x). Joins between a foreground and a background pixel are ignored. Returns (labels int32 (H, W)
    with 0 for background and 1..n for components numbered in raster order of their first pixel, n)."""
    fg = np.asarray(fg, dtype=bool)
    h, w = fg.shape
    if hjoin.shape != (h, max(w - 1, 0)) or vjoin.shape != (max(h - 1, 0), w):
        raise ValueError(f"join masks must be (H, W-1) and (H-1, W) for a ({h}, {w}) image, got "
                         f"{hjoin.shape} and {vjoin.shape}")
    if not fg.any():
        return np.zeros((h, w), dtype=np.int32), 0
    left_joined = np.zeros((h, w), dtype=bool)
    left_joined[:, 1:] = hjoin & fg[:, 1:] & fg[:, :-1]
    starts = fg & ~left_joined
    # every foreground pixel inherits the id of the run start to its left (row starts are run starts)
    run_id = (np.cumsum(starts.ravel()) - 1).reshape(h, w)
    n_runs = int(starts.sum())
    down = vjoin & fg[:-1, :] & fg[1:, :]
    a = run_id[:-1, :][down]
    b = run_id[1:, :][down]
    parent = np.arange(n_runs)
    if a.size:
        edges = np.unique(np.stack([a, b], axis=1), axis=0)
        a, b = edges[:, 0], edges[:, 1]
        while True:
            m = np.minimum(parent[a], parent[b])
            new = parent.copy()
            np.minimum.at(new, a, m)
            np.minimum.at(new, b, m)
            new = new[new]                      # pointer jumping: follow the chain one more link
            if np.array_equal(new, parent):
                break
            parent = new
        while True:                             # flatten to roots
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    roots, comp = np.unique(parent, return_inverse=True)
    labels = np.zeros((h, w), dtype=np.int32)
    labels[fg] = comp[run_id[fg]] + 1
    return labels, int(len(roots))


def label_classes(classes: np.ndarray) -> Tuple[np.ndarray, int]:
    """4-connected components of equal non-zero class: (labels, n)."""
    c = np.asarray(classes)
    return label_runs(c > 0, c[:, 1:] == c[:, :-1], c[1:, :] == c[:-1, :])


def component_stats(labels: np.ndarray, n: int) -> Dict[str, np.ndarray]:
    """Per component 1..n: area (n,), box (n, 4) pixel xyxy with exclusive max, centroid (n, 2) as (x, y)."""
    h, w = labels.shape
    flat = labels.ravel()
    ys, xs = np.divmod(np.arange(flat.size), w)
    sel = flat > 0
    lab = flat[sel] - 1
    area = np.bincount(lab, minlength=n).astype(np.float64)
    x0 = np.full(n, w, dtype=np.int64)
    y0 = np.full(n, h, dtype=np.int64)
    x1 = np.full(n, -1, dtype=np.int64)
    y1 = np.full(n, -1, dtype=np.int64)
    np.minimum.at(x0, lab, xs[sel])
    np.minimum.at(y0, lab, ys[sel])
    np.maximum.at(x1, lab, xs[sel])
    np.maximum.at(y1, lab, ys[sel])
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(lab, weights=xs[sel] + 0.5, minlength=n) / area
        cy = np.bincount(lab, weights=ys[sel] + 0.5, minlength=n) / area
    return {"area": area, "box": np.stack([x0, y0, x1 + 1, y1 + 1], axis=1).astype(np.float64),
            "centroid": np.stack([cx, cy], axis=1)}


def _param(params: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    raw = params.get(key, default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"components boxer parameter {key}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise ValueError(f"components boxer parameter {key}={raw!r} must be in [{lo:g}, {hi:g}]")
    return value


class ComponentsBoxer:
    """BoxerBackend over flat-coloured images. Params (strings, as Triton passes them):
    `tolerance` (RGB distance under which neighbours join, default 60), `background_tolerance` (distance
    from the background colour under which a pixel is background, default 60), `min_pixels` (smaller
    regions are noise, default 4). `points_per_side` of BoxOptions is SAM's and ignored here."""

    name = "components"

    def __init__(self, params: Mapping[str, Any] | None = None):
        params = dict(params or {})
        unknown = set(params) - {"tolerance", "background_tolerance", "min_pixels"}
        if unknown:
            raise ValueError(f"components boxer: unknown parameter(s) {sorted(unknown)}; "
                             "known: tolerance, background_tolerance, min_pixels")
        self.tolerance = _param(params, "tolerance", 60.0, 0.0, 442.0)
        self.background_tolerance = _param(params, "background_tolerance", 60.0, 0.0, 442.0)
        self.min_pixels = int(_param(params, "min_pixels", 4, 1, 1e9))

    def regions(self, image: Any) -> Tuple[np.ndarray, int, np.ndarray]:
        """(labels (H, W), n, background colour) of one image."""
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"components boxer: expected an RGB image, got an array of shape {arr.shape}")
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]], axis=0)
        bg = np.median(border, axis=0)
        fg = np.sqrt(((arr - bg) ** 2).sum(-1)) > self.background_tolerance
        tol2 = self.tolerance ** 2
        hjoin = ((arr[:, 1:] - arr[:, :-1]) ** 2).sum(-1) < tol2
        vjoin = ((arr[1:] - arr[:-1]) ** 2).sum(-1) < tol2
        labels, n = label_runs(fg, hjoin, vjoin)
        return labels, n, bg

    def _propose_one(self, image: Any, options: BoxOptions) -> BoxProposal:
        labels, n, _ = self.regions(image)
        h, w = labels.shape
        empty = BoxProposal(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.float32))
        if n == 0 or options.max_regions <= 0:
            return empty
        st = component_stats(labels, n)
        area, box = st["area"], st["box"]
        keep = (area >= self.min_pixels) & (area >= options.min_area * h * w)
        # confidence: how much of its bounding box the region fills (a clean blob vs a stray streak)
        fill = area / np.maximum(1.0, (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))
        idx = np.nonzero(keep)[0]
        idx = idx[np.argsort(-area[idx], kind="stable")][: options.max_regions]
        return BoxProposal(boxes=box[idx].astype(np.float32), areas=area[idx].astype(np.float32),
                           confidence=np.clip(fill[idx], 0.0, 1.0).astype(np.float32))

    def propose(self, images: Sequence[Any], options: BoxOptions) -> List[BoxProposal]:
        return [self._propose_one(img, options) for img in images]
