"""Dense reward maps from a judged candidate: image resolution and the model's latent-token grid.

Modes (reward.mode):
  reference  the reference pipeline: background 0.5; each valid box raises its pixels to
             max(current, (s + 1) / 2); the whole map is multiplied by (g + 1) / 2 (g = global score);
             no regions: the neutral map times (g + 1) / 2. `alpha` is 1 (the global factor is in the map).
  signed     R in [-1, 1]: background 0, each pixel takes the score of the covering region with the
             largest |s| (ties: the lower score, i.e. a penalty beats an equal praise); alpha = (g + 1) / 2
             is kept separate for the loss.
  sparse     the ablation: one 0/1 value for the whole image, 1 when g > reward.sparse_threshold.
  corrective for the debiased weighting (training/loss.py): 1 on the background and on every region the
             judge does not penalise, the region's score where it is negative (the most negative region
             wins where they overlap); alpha = (g + 1) / 2 separate. Praise does not vary over the image
             (no object/background tilt); only criticism is local.
  sample     the paper's sample-level baseline: one value, 1, for the whole image; alpha = (g + 1) / 2.
With reward.use_global False the global factor is left out (reference: not multiplied; other modes: alpha = 1).
Regions the judge's box verification rejected (RegionJudgment.verified False, recorded when judging ran
with reward.score_unverified) count only when reward.score_unverified is set; otherwise they are left out
exactly as if verification had dropped them.

Representation. Every map here is piecewise constant on the grid cut by the boxes' edges, so it is built
on that small grid (at most 2K+1 rows and columns for K boxes, all boxes at once with broadcasting) and
only then expanded to pixels, and pooled to any latent grid exactly: a latent cell's value is the
area-weighted mean of the pixels it covers (fractional pixels included when the grid does not divide the
image), computed as Py @ V @ Px^T with small overlap matrices, never by sampling one pixel per cell.

Boxes: pixel xyxy as the boxer proposed them. A box covers every pixel it touches (x0 floored, x1 ceiled)
after clamping to the image. Skipped, and counted by reason: non-numeric coordinates, non-finite ones
(NaN/inf), inverted boxes (x1 < x0 or y1 < y0), and boxes empty after clamping (zero width/height or
entirely outside the image). Regions without a parsed score are skipped as `unscored`.
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .records import RewardRecord
from .storage import sha256_hex

SKIP_REASONS: Tuple[str, ...] = ("non_numeric", "non_finite", "inverted", "empty", "unscored")
MODES: Tuple[str, ...] = ("reference", "signed", "sparse", "corrective", "sample")
REFERENCE_BACKGROUND = 0.5
SIGNED_BACKGROUND = 0.0
CORRECTIVE_BACKGROUND = 1.0


class RewardMapError(ValueError):
    """A reward map that cannot be decoded or built; the message names what is wrong."""


# ------------------------------------------------------------------------------------------- boxes


@dataclass(frozen=True, eq=False)   # holds arrays: compare fields explicitly
class CheckedBoxes:
    """Boxes after validation and clamping: integer pixel edges of the valid ones, in input order."""

    pixels: np.ndarray                  # (K, 4) int64 xyxy pixel edges (x1, y1 exclusive)
    index: np.ndarray                   # (K,) positions of the valid boxes in the input
    skipped: Dict[str, int]             # reason -> count


def _coerce(box: Any) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """One box -> 4 floats, or the reason it is not a box."""
    try:
        vals = list(box)
    except TypeError:
        return None, "non_numeric"
    if len(vals) != 4:
        return None, "non_numeric"
    out = np.empty(4, dtype=np.float64)
    for i, v in enumerate(vals):
        # strings and booleans are not coordinates, even when float() would accept them
        if isinstance(v, (bool, np.bool_, str, bytes)) or v is None:
            return None, "non_numeric"
        try:
            out[i] = float(v)
        except (TypeError, ValueError, OverflowError):
            return None, "non_numeric"
    return out, None


def check_boxes(boxes: Any, height: int, width: int) -> CheckedBoxes:
    """Validate and clamp boxes (any sequence of 4-sequences, or an (N, 4) array) to an image."""
    skipped = {r: 0 for r in SKIP_REASONS}
    if isinstance(boxes, np.ndarray) and boxes.dtype.kind in "fiu" and boxes.ndim == 2 and boxes.shape[1] == 4:
        # already numeric: no per-box Python work (the record path and the boxer arrays come this way)
        xyxy = boxes.astype(np.float64, copy=False)
        ok = np.ones(len(xyxy), dtype=bool)
    else:
        try:
            items = list(boxes) if boxes is not None else []
        except TypeError:
            raise RewardMapError(f"boxes must be a sequence of [x0, y0, x1, y1], got {type(boxes).__name__}") from None
        xyxy = np.zeros((len(items), 4), dtype=np.float64)
        ok = np.zeros(len(items), dtype=bool)
        for i, b in enumerate(items):
            v, why = _coerce(b)
            if why is None:
                xyxy[i], ok[i] = v, True
            else:
                skipped[why] += 1
    finite = np.isfinite(xyxy).all(axis=1)
    skipped["non_finite"] += int((ok & ~finite).sum())
    ok &= finite
    with np.errstate(invalid="ignore"):
        inverted = (xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])
    skipped["inverted"] += int((ok & inverted).sum())
    ok &= ~inverted
    c = np.where(ok[:, None], xyxy, 0.0)
    c[:, [0, 2]] = np.clip(c[:, [0, 2]], 0.0, float(width))
    c[:, [1, 3]] = np.clip(c[:, [1, 3]], 0.0, float(height))
    empty = (c[:, 2] <= c[:, 0]) | (c[:, 3] <= c[:, 1])
    skipped["empty"] += int((ok & empty).sum())
    ok &= ~empty
    px = np.empty((int(ok.sum()), 4), dtype=np.int64)
    px[:, [0, 1]] = np.floor(c[ok][:, [0, 1]])
    px[:, [2, 3]] = np.ceil(c[ok][:, [2, 3]])
    return CheckedBoxes(pixels=px, index=np.flatnonzero(ok), skipped=skipped)


# ----------------------------------------------------------------------------------------- pooling


def overlap_matrix(out_edges: np.ndarray, in_edges: np.ndarray) -> np.ndarray:
    """(n_out, n_in): the fraction of each output interval covered by each input interval.

    Rows sum to 1 when both edge lists span the same range, so `M @ values` is the length-weighted mean."""
    out_edges = np.asarray(out_edges, dtype=np.float64)
    in_edges = np.asarray(in_edges, dtype=np.float64)
    lo = np.maximum(out_edges[:-1, None], in_edges[None, :-1])
    hi = np.minimum(out_edges[1:, None], in_edges[None, 1:])
    length = np.diff(out_edges)[:, None]
    return np.clip(hi - lo, 0.0, None) / length


def pooling_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) area weights that average n_in pixels into n_out equal cells (any ratio)."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"pooling needs positive sizes, got {n_in} pixels -> {n_out} cells")
    return overlap_matrix(np.linspace(0.0, n_in, n_out + 1), np.arange(n_in + 1, dtype=np.float64))


def pool_to_grid(pixels: np.ndarray, grid: Tuple[int, int]) -> np.ndarray:
    """Area-weighted mean of an (H, W) map over a (gh, gw) grid of equal cells."""
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.ndim != 2:
        raise ValueError(f"pool_to_grid expects an (H, W) map, got shape {pixels.shape}")
    gh, gw = grid
    h, w = pixels.shape
    if h % gh == 0 and w % gw == 0:  # the common case: a plain block mean, no matrices
        return pixels.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3)).astype(np.float32)
    return (pooling_matrix(h, gh) @ pixels @ pooling_matrix(w, gw).T).astype(np.float32)


# ------------------------------------------------------------------------------------------- maps


@dataclass(frozen=True, eq=False)   # holds arrays: compare fields explicitly
class RewardMap:
    """A piecewise-constant reward map: `values[a, b]` holds on rows y_edges[a]:y_edges[a+1] and
    columns x_edges[b]:x_edges[b+1]."""

    mode: str
    height: int
    width: int
    y_edges: np.ndarray                 # (cy + 1,) int64, 0 .. height
    x_edges: np.ndarray                 # (cx + 1,) int64, 0 .. width
    values: np.ndarray                  # (cy, cx) float32
    alpha: float                        # global factor for the loss (1 when folded into the map / unused)
    boxes_used: int = 0
    skipped: Dict[str, int] = field(default_factory=lambda: {r: 0 for r in SKIP_REASONS})

    @property
    def skipped_boxes(self) -> int:
        return int(sum(self.skipped.values()))

    @cached_property
    def pixels(self) -> np.ndarray:
        """(height, width) float32 at image resolution."""
        rows = np.repeat(self.values.astype(np.float32, copy=False), np.diff(self.x_edges), axis=1)
        return np.repeat(rows, np.diff(self.y_edges), axis=0)

    def pooled(self, grid: Tuple[int, int]) -> np.ndarray:
        """(gh, gw) float32: the exact area-weighted mean of `pixels` over each latent cell."""
        gh, gw = int(grid[0]), int(grid[1])
        if gh < 1 or gw < 1:
            raise ValueError(f"latent grid must be positive, got {grid}")
        py = overlap_matrix(np.linspace(0.0, self.height, gh + 1), self.y_edges)
        px = overlap_matrix(np.linspace(0.0, self.width, gw + 1), self.x_edges)
        return (py @ self.values.astype(np.float64) @ px.T).astype(np.float32)

    def tokens(self, grid: Tuple[int, int]) -> np.ndarray:
        """(gh * gw,) float32 in the row-major token order of models/base.py FlowOutput."""
        return self.pooled(grid).reshape(-1)


def _score(s: Any, what: str) -> float:
    """A score in [-1, 1] or None (no score: NaN here); anything else is the caller's error."""
    if s is None:
        return math.nan
    if isinstance(s, (bool, np.bool_, str, bytes)):
        raise RewardMapError(f"{what} is {s!r}, not a number or None")
    try:
        return float(s)
    except (TypeError, ValueError, OverflowError):
        raise RewardMapError(f"{what} is {s!r}, not a number or None") from None


def _global_factor(g: Optional[float]) -> float:
    """(g + 1) / 2 for a global score in [-1, 1]; a missing score counts as neutral (0)."""
    g = _score(g, "the global score")
    g = 0.0 if not math.isfinite(g) else min(1.0, max(-1.0, g))
    return (g + 1.0) / 2.0


def build_reward_map(boxes: Any, scores: Sequence[Optional[float]], global_score: Optional[float],
                     height: int, width: int, *, mode: str = "reference", use_global: bool = True,
                     sparse_threshold: float = 0.0) -> RewardMap:
    """The map for one image from its region boxes (pixel xyxy), their scores in [-1, 1] (None: no
    score), and the global score."""
    if mode not in MODES:
        raise RewardMapError(f"reward mode {mode!r} is not one of {MODES}")
    try:
        height, width = int(height), int(width)
    except (TypeError, ValueError, OverflowError):
        raise RewardMapError(f"image size must be two integers, got {width!r}x{height!r}") from None
    if height < 1 or width < 1:
        raise RewardMapError(f"image size must be positive, got {width}x{height}")
    full_y = np.array([0, height], dtype=np.int64)
    full_x = np.array([0, width], dtype=np.int64)

    if mode == "sparse":
        g = _score(global_score, "the global score")
        g = g if math.isfinite(g) else None
        value = 1.0 if (g is not None and g > sparse_threshold) else 0.0
        return RewardMap(mode, height, width, full_y, full_x, np.full((1, 1), value, np.float32), alpha=1.0)
    if mode == "sample":
        return RewardMap(mode, height, width, full_y, full_x, np.ones((1, 1), np.float32),
                         alpha=_global_factor(global_score) if use_global else 1.0)

    try:
        box_list = list(boxes) if not isinstance(boxes, np.ndarray) else boxes
    except TypeError:
        raise RewardMapError(f"boxes must be a sequence of [x0, y0, x1, y1], got {type(boxes).__name__}") from None
    if scores is None or isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise RewardMapError(f"scores must be a sequence (one per box), got {type(scores).__name__}")
    if len(scores) != len(box_list):
        raise RewardMapError(f"{len(box_list)} boxes but {len(scores)} scores")
    checked = check_boxes(box_list, height, width)
    skipped = dict(checked.skipped)
    s_all = np.array([_score(s, f"score {i}") for i, s in enumerate(scores)], dtype=np.float64)
    s = s_all[checked.index]
    scored = np.isfinite(s)
    skipped["unscored"] += int((~scored).sum())
    px = checked.pixels[scored]
    s = np.clip(s[scored], -1.0, 1.0)

    factor = _global_factor(global_score) if use_global else 1.0
    background = {"reference": REFERENCE_BACKGROUND, "signed": SIGNED_BACKGROUND,
                  "corrective": CORRECTIVE_BACKGROUND}[mode]
    ye = np.unique(np.concatenate([full_y, px[:, 1], px[:, 3]]))
    xe = np.unique(np.concatenate([full_x, px[:, 0], px[:, 2]]))
    if len(px):
        # cell (a, b) lies wholly inside or wholly outside each box, because every box edge is a cell edge
        in_y = (px[:, 1, None] <= ye[None, :-1]) & (ye[None, :-1] < px[:, 3, None])       # (K, cy)
        in_x = (px[:, 0, None] <= xe[None, :-1]) & (xe[None, :-1] < px[:, 2, None])       # (K, cx)
        cover = in_y[:, :, None] & in_x[:, None, :]                                       # (K, cy, cx)
        if mode == "reference":
            v = (s + 1.0) / 2.0
            best = np.where(cover, v[:, None, None], -np.inf).max(axis=0)
            values = np.maximum(best, background)
        elif mode == "corrective":
            worst = np.where(cover & (s < 0)[:, None, None], s[:, None, None], np.inf).min(axis=0)
            values = np.where(np.isfinite(worst), worst, background)
        else:
            # winner per cell: largest |s|, ties to the lower s; order boxes so the winner comes last
            order = np.lexsort((-s, np.abs(s)))
            cov = cover[order]
            last = len(order) - 1 - np.argmax(cov[::-1], axis=0)
            values = np.where(cov.any(axis=0), s[order][last], background)
    else:
        values = np.full((len(ye) - 1, len(xe) - 1), background)
    if mode == "reference":
        values = values * factor
        alpha = 1.0
    else:
        alpha = factor
    return RewardMap(mode, height, width, ye, xe, values.astype(np.float32), alpha=float(alpha),
                     boxes_used=int(len(px)), skipped=skipped)


def reward_map_from_record(record: RewardRecord, cfg: Any) -> RewardMap:
    """The map of one reward record under a RewardConfig (mode, use_global, sparse_threshold)."""
    # Box fields are validated floats, so the numeric fast path of check_boxes applies
    regions = [r for r in record.regions if r.verified is not False or getattr(cfg, "score_unverified", False)]
    boxes = np.array([r.box.as_tuple() for r in regions], dtype=np.float64).reshape(-1, 4)
    scores = [r.score if r.parsed else None for r in regions]
    return build_reward_map(boxes, scores, record.global_judgment.score, record.height, record.width,
                            mode=cfg.mode, use_global=cfg.use_global, sparse_threshold=cfg.sparse_threshold)


def training_filter(record: RewardRecord, cfg: Any) -> Tuple[bool, Optional[str]]:
    """(use, reason): whether a record goes into training, and if not, why (a short snake_case word)."""
    g = record.global_judgment
    if cfg.drop_unparsed and not g.parsed:
        return False, "global_unparsed"
    if cfg.drop_unparsed and not record.regions_parsed:
        return False, "regions_unparsed"
    if cfg.drop_zero_global and g.parsed and g.score == 0.0:
        return False, "zero_global"
    if cfg.min_global_score is not None and g.parsed and g.score is not None and g.score <= cfg.min_global_score:
        return False, "low_global"
    return True, None


# ------------------------------------------------------------------------------------------ storage

_MAGIC = b"SRUMRMAP"
_FORMAT_VERSION = 1
_DIGEST_BYTES = 32


def encode_map(rmap: RewardMap) -> bytes:
    """Compact, exact, self-checking bytes: magic, header JSON, int32 edges, float32 cell values, and a
    trailing sha256 of everything before it. A 1024x1024 map with 20 boxes is a few kilobytes."""
    header = {"v": _FORMAT_VERSION, "mode": rmap.mode, "height": rmap.height, "width": rmap.width,
              "alpha": rmap.alpha, "boxes_used": rmap.boxes_used, "skipped": rmap.skipped,
              "ny": int(len(rmap.y_edges)), "nx": int(len(rmap.x_edges))}
    hdr = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = b"".join([_MAGIC, struct.pack("<I", len(hdr)), hdr,
                     np.ascontiguousarray(rmap.y_edges, dtype="<i4").tobytes(),
                     np.ascontiguousarray(rmap.x_edges, dtype="<i4").tobytes(),
                     np.ascontiguousarray(rmap.values, dtype="<f4").tobytes()])
    return body + bytes.fromhex(sha256_hex(body))


def map_checksum(data: bytes) -> str:
    """The sha256 recorded inside an encoded map (hex)."""
    if len(data) < _DIGEST_BYTES:
        raise RewardMapError("not an encoded reward map: too short")
    return data[-_DIGEST_BYTES:].hex()


def decode_map(data: bytes, *, source: str = "<bytes>") -> RewardMap:
    """Bytes from encode_map -> RewardMap; a truncated or corrupted map fails, naming `source`."""
    if len(data) < len(_MAGIC) + 4 + _DIGEST_BYTES or not data.startswith(_MAGIC):
        raise RewardMapError(f"{source} is not an encoded reward map (bad magic or too short)")
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:].hex()
    if sha256_hex(body) != digest:
        raise RewardMapError(f"{source}: reward map checksum mismatch (corrupt or truncated)")
    stream = io.BytesIO(body[len(_MAGIC):])
    (hlen,) = struct.unpack("<I", stream.read(4))
    try:
        header = json.loads(stream.read(hlen).decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RewardMapError(f"{source}: reward map header unreadable: {e}") from None
    if not isinstance(header, dict):
        raise RewardMapError(f"{source}: reward map header is not a JSON object")
    if header.get("v") != _FORMAT_VERSION:
        raise RewardMapError(f"{source}: reward map format version {header.get('v')!r}, expected {_FORMAT_VERSION}")
    try:
        ny, nx = int(header["ny"]), int(header["nx"])
        y = np.frombuffer(stream.read(4 * ny), dtype="<i4").astype(np.int64)
        x = np.frombuffer(stream.read(4 * nx), dtype="<i4").astype(np.int64)
        vals = np.frombuffer(stream.read(), dtype="<f4")
        if ny < 2 or nx < 2 or len(y) != ny or len(x) != nx or vals.size != (ny - 1) * (nx - 1):
            raise RewardMapError(f"{source}: reward map arrays do not match their header")
        mode, height, width, alpha = header["mode"], int(header["height"]), int(header["width"]), float(header["alpha"])
        if (mode not in MODES or height < 1 or width < 1 or y[0] != 0 or y[-1] != height or x[0] != 0
                or x[-1] != width or (np.diff(y) <= 0).any() or (np.diff(x) <= 0).any()
                or not np.isfinite(vals).all() or not math.isfinite(alpha)):
            raise RewardMapError(f"{source}: reward map is inconsistent (mode, size, edges or values)")
        return RewardMap(mode, height, width, y, x,
                         vals.reshape(ny - 1, nx - 1).astype(np.float32), alpha=alpha,
                         boxes_used=int(header["boxes_used"]),
                         skipped={k: int(v) for k, v in header["skipped"].items()})
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        if isinstance(e, RewardMapError):
            raise
        raise RewardMapError(f"{source}: reward map header lacks or garbles a field: {e!r}") from None
