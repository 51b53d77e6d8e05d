"""Evaluation as the paper reports it: one module per benchmark (prompt import, evaluator instruction,
answer parser, aggregation, table), shared statistics (paired bootstrap), the understanding-regression
runner and the paper's analyses. The eval stage (stages/evaluate.py) drives them.

Registry: the config string in `eval.benchmarks[].name` -> "module:Class" (registry.BENCHMARKS, filled by
evaluation/plugin.py and, for the toy world's benchmark, toy/plugin.py), imported only when used.
"""

from __future__ import annotations

from typing import Optional

from ..registry import BENCHMARKS


def load_benchmark(name: str, templates_dir: Optional[str] = None):
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS.load(name)(templates_dir)
