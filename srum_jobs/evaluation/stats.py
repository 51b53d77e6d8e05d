"""Statistics for comparing two runs over the same prompts: means per category and a paired bootstrap.

The unit is the prompt: a prompt's value is the mean of its parsed samples (so every prompt weighs the
same whatever its number of samples), and two runs (base and trained, plain and think) are compared on
the prompts both scored, with the same seeds behind both. The bootstrap resamples prompts with
replacement *within each category* (stratified), recomputes each run's category means on the same
resampled prompts, passes both through the benchmark's own aggregation (derived rows, overall) and takes
the percentile interval of the difference. Everything is vectorised over resamples with numpy.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

Aggregate = Callable[[Mapping[str, Any], Mapping[str, int]], Dict[str, Any]]


def prompt_values(items: Iterable[Mapping[str, Any]], metric: str) -> Dict[str, Tuple[str, float]]:
    """prompt id -> (category, mean of its parsed samples' `metric`). Unparsed items are left out; a prompt
    without any parsed sample is absent."""
    acc: Dict[str, List[float]] = defaultdict(list)
    cat: Dict[str, str] = {}
    for it in items:
        if not it.get("parsed") or metric not in (it.get("values") or {}):
            continue
        acc[it["prompt_id"]].append(float(it["values"][metric]))
        cat[it["prompt_id"]] = it["category"]
    return {pid: (cat[pid], float(np.mean(v))) for pid, v in acc.items()}


def category_means(values: Mapping[str, Tuple[str, float]]) -> Tuple[Dict[str, float], Dict[str, int]]:
    by: Dict[str, List[float]] = defaultdict(list)
    for c, v in values.values():
        by[c].append(v)
    return {c: float(np.mean(v)) for c, v in by.items()}, {c: len(v) for c, v in by.items()}


def paired_bootstrap(a: Mapping[str, Tuple[str, float]], b: Mapping[str, Tuple[str, float]], aggregate: Aggregate,
                     *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Dict[str, Any]:
    """The difference a - b on the prompts both runs scored, row by row of the benchmark's table.

    Returns {"rows": {row: {"diff", "ci": [lo, hi], "a", "b"}}, "prompts": n paired, "unpaired": n dropped}.
    A row the aggregation cannot compute (a category missing) has diff None."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    shared = sorted(set(a) & set(b))
    dropped = len(set(a) ^ set(b))
    by_cat: Dict[str, List[Tuple[float, float]]] = defaultdict(list)
    for pid in shared:
        by_cat[a[pid][0]].append((a[pid][1], b[pid][1]))
    if not by_cat:
        return {"rows": {}, "prompts": 0, "unpaired": dropped}
    counts = {c: len(v) for c, v in by_cat.items()}
    point_a = {c: float(np.mean([x for x, _ in v])) for c, v in by_cat.items()}
    point_b = {c: float(np.mean([y for _, y in v])) for c, v in by_cat.items()}
    rows_a, rows_b = aggregate(point_a, counts), aggregate(point_b, counts)
    rng = np.random.default_rng(seed)
    rep_a: Dict[str, np.ndarray] = {}
    rep_b: Dict[str, np.ndarray] = {}
    for c in sorted(by_cat):
        pairs = np.asarray(by_cat[c], dtype=np.float64)          # (n, 2)
        idx = rng.integers(0, len(pairs), size=(resamples, len(pairs)))
        rep_a[c] = pairs[idx, 0].mean(axis=1)
        rep_b[c] = pairs[idx, 1].mean(axis=1)
    boot_a, boot_b = aggregate(rep_a, counts), aggregate(rep_b, counts)
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    rows: Dict[str, Any] = {}
    for row, va in rows_a.items():
        vb = rows_b.get(row)
        if va is None or vb is None or boot_a.get(row) is None or boot_b.get(row) is None:
            rows[row] = {"diff": None, "ci": None, "a": va, "b": vb}
            continue
        d = np.asarray(boot_a[row]) - np.asarray(boot_b[row])
        rows[row] = {"diff": float(va - vb), "ci": [float(np.quantile(d, lo_q)), float(np.quantile(d, hi_q))],
                     "a": float(va), "b": float(vb)}
    return {"rows": rows, "prompts": len(shared), "unpaired": dropped, "per_category_prompts": counts}


def summarise_run(items: Sequence[Mapping[str, Any]], metrics: Sequence[str], aggregate: Aggregate) -> Dict[str, Any]:
    """One run's table: per metric, every row of the benchmark's aggregation; plus item counts, the
    unparsed items (overall and per category) and the prompts scored."""
    out: Dict[str, Any] = {"items": len(items), "parsed": sum(1 for it in items if it.get("parsed")),
                           "metrics": {}}
    out["unparsed"] = out["items"] - out["parsed"]
    unparsed_by: Dict[str, int] = defaultdict(int)
    for it in items:
        if not it.get("parsed"):
            unparsed_by[it["category"]] += 1
    out["unparsed_by_category"] = dict(sorted(unparsed_by.items()))
    for m in metrics:
        values = prompt_values(items, m)
        means, counts = category_means(values)
        rows = aggregate(means, counts) if means else {}
        out["metrics"][m] = {"rows": {k: (None if v is None else float(v)) for k, v in rows.items()},
                             "prompts": counts}
    return out
