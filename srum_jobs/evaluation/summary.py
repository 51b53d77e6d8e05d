"""eval/summary.json: every benchmark's tables (per run: variant x mode), the paired comparisons with
their bootstrap intervals, unparsed counts, the toy judge's agreement with the benchmark, the
understanding regression, the analyses, and the headline `srum run` prints.

Shape (values in the benchmark's own unit: accuracy in [0, 1], CompBench points 0-100, WiScore 0-1):
{"benchmarks": {name: {"title", "metrics", "unit", "rows", "runs": {"base/plain": {items, parsed, unparsed,
   unparsed_by_category, metrics: {metric: {rows: {row: value}, prompts}}, judge_agreement}},
   "comparisons": [{"name", "a", "b", metric: {rows: {row: {diff, ci, a, b}}, prompts, unpaired}}],
   "skipped": {run: reason}}},
 "understanding": {...}, "analyses": {...}, "headline": {...}}
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from . import load_benchmark
from .run import VARIANTS, Run, read_results
from .stats import paired_bootstrap, prompt_values, summarise_run


def comparisons_for(runs: Sequence[str]) -> List[tuple]:
    """(name, a, b): trained - base in each mode, think - plain for each variant."""
    out = []
    for mode in ("plain", "think"):
        if f"trained/{mode}" in runs and f"base/{mode}" in runs:
            out.append((f"trained - base ({mode})", f"trained/{mode}", f"base/{mode}"))
    for variant in VARIANTS:
        if f"{variant}/think" in runs and f"{variant}/plain" in runs:
            out.append((f"think - plain ({variant})", f"{variant}/think", f"{variant}/plain"))
    return out


def _agreement(rows: Sequence[dict]) -> Optional[float]:
    pairs = [(r["judge_ok"], r["values"].get("accuracy")) for r in rows
             if r.get("parsed") and r.get("judge_ok") is not None and "accuracy" in r["values"]]
    if not pairs:
        return None
    return sum(1 for judge_ok, acc in pairs if judge_ok == (acc >= 0.5)) / len(pairs)


def benchmark_summary(exp: Any, store: Any, layout: Any, bcfg: Any, shards: Sequence[int],
                      skipped: Dict[str, str]) -> Dict[str, Any]:
    bench = load_benchmark(bcfg.name, exp.eval.templates_dir)
    out: Dict[str, Any] = {"title": bench.title, "metrics": list(bench.metrics), "unit": bench.unit, "runs": {},
                           "comparisons": [], "skipped": {}}
    rows_of: Dict[str, List[dict]] = {}
    for variant in VARIANTS:
        for mode in exp.eval.modes:
            run = Run(bcfg.name, variant, mode)
            rows = read_results(store, layout, run, shards)
            if not rows:
                out["skipped"][run.name] = skipped.get(mode, "no results")
                continue
            rows_of[run.name] = rows
            table = summarise_run(rows, bench.metrics, bench.aggregate)
            table["judge_agreement"] = _agreement(rows)
            out["runs"][run.name] = table
    cats = sorted({r["category"] for rows in rows_of.values() for r in rows})
    out["rows"] = bench.rows(cats)
    for i, (name, a, b) in enumerate(comparisons_for(list(rows_of))):
        comp: Dict[str, Any] = {"name": name, "a": a, "b": b}
        for m in bench.metrics:
            comp[m] = paired_bootstrap(prompt_values(rows_of[a], m), prompt_values(rows_of[b], m), bench.aggregate,
                                       resamples=exp.eval.bootstrap_resamples, confidence=exp.eval.confidence,
                                       seed=exp.eval.seed + i)
        out["comparisons"].append(comp)
    return out


def headline(summary: Dict[str, Any]) -> Dict[str, Any]:
    """The first benchmark's overall headline metric for base/trained x plain/think, and trained - base
    per mode with its interval (what `srum run` prints and the report leads with)."""
    if not summary.get("benchmarks"):
        return {}
    name, b = next(iter(summary["benchmarks"].items()))
    metric = b["metrics"][0]
    out: Dict[str, Any] = {"benchmark": name, "title": b["title"], "metric": metric, "unit": b["unit"], "runs": {},
                           "changes": {}, "confidence": summary.get("confidence")}
    for run, t in b["runs"].items():
        out["runs"][run] = {"overall": t["metrics"][metric]["rows"].get("overall"), "items": t["items"],
                            "unparsed": t["unparsed"], "judge_agreement": t.get("judge_agreement")}
    for c in b["comparisons"]:
        row = c[metric]["rows"].get("overall") or {}
        out["changes"][c["name"]] = {"diff": row.get("diff"), "ci": row.get("ci"), "prompts": c[metric]["prompts"]}
    out["skipped"] = b["skipped"]
    return out
