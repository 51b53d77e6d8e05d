"""Evaluation as the paper reports it: one module per benchmark (prompt import, evaluator instruction,
answer parser, aggregation, table), shared statistics (paired bootstrap), the understanding-regression
runner and the paper's analyses. The eval stage (stages/evaluate.py) drives them.

Registry: the config string in `eval.benchmarks[].name` -> "module:Class", imported only when used.
"""

from __future__ import annotations

import importlib
from typing import Dict, Optional

BENCHMARKS: Dict[str, str] = {
    "toy": "srum_jobs.evaluation.toy:ToyBenchmark",
    "compbench": "srum_jobs.evaluation.compbench:CompBench",
    "geneval": "srum_jobs.evaluation.geneval:GenEval",
    "wise": "srum_jobs.evaluation.wise:Wise",
    "reasonbench": "srum_jobs.evaluation.reasonbench:ReasonBench",
}


def load_benchmark(name: str, templates_dir: Optional[str] = None):
    try:
        module, cls = BENCHMARKS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}") from None
    return getattr(importlib.import_module(module), cls)(templates_dir)
