"""Paired statistics for the toy bench: a method against the base on the same prompts.

Every method is evaluated on the same prompts with several samples per prompt (and several training
seeds), so the unit of comparison is the prompt: each prompt's score is the share of its images that
satisfy it, and the difference (method - base) is taken prompt by prompt. The interval is a percentile
bootstrap over prompts of the mean difference (paired, so prompt difficulty cancels); the exact McNemar
test reads the prompts whose majority verdict flips.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np


def paired_bootstrap_ci(method: Sequence[float], base: Sequence[float], *, n_boot: int = 10000,
                        level: float = 0.95, seed: int = 0) -> Tuple[float, float, float]:
    """(mean difference, low, high) of mean(method - base) over paired items, percentile bootstrap.
    `method[i]` and `base[i]` are item i's scores (e.g. the share of a prompt's images judged correct)."""
    m = np.asarray(method, dtype=np.float64)
    b = np.asarray(base, dtype=np.float64)
    if m.shape != b.shape or m.ndim != 1:
        raise ValueError(f"paired scores must be two equal-length lists, got {m.shape} and {b.shape}")
    if m.size == 0:
        raise ValueError("paired bootstrap of no items")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = m - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0])
    return float(d.mean()), float(lo), float(hi)


def mcnemar_exact(b_only: int, m_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (items only the base gets right, items
    only the method gets right): a binomial(n, 1/2) test."""
    if b_only < 0 or m_only < 0:
        raise ValueError("discordant counts must be >= 0")
    n = b_only + m_only
    if n == 0:
        return 1.0
    k = min(b_only, m_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def per_item_scores(oks: Mapping[str, Sequence[bool]]) -> Dict[str, float]:
    """item key -> share of its verdicts that are True."""
    return {k: float(np.mean(v)) for k, v in oks.items() if len(v)}
