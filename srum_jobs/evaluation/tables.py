"""Tables of the eval summary as rows of strings (the report renders them to HTML and Markdown; `srum
run` prints the headline). Values are shown in the benchmark's unit: "%" as percentages (differences in
percentage points), "points" as they are (CompBench 0-100, WiScore 0-1)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

RUN_ORDER = ("base/plain", "trained/plain", "base/think", "trained/think")
RUN_LABELS = {"base/plain": "base", "trained/plain": "trained", "base/think": "base, think",
              "trained/think": "trained, think"}


def fmt_value(x: Optional[float], unit: str) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if unit == "%" else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def fmt_diff(d: Optional[float], unit: str) -> str:
    if d is None:
        return "n/a"
    return f"{100 * d:+.1f}" if unit == "%" else f"{d:+.2f}" if abs(d) < 10 else f"{d:+.1f}"


def fmt_change(c: Optional[Dict[str, Any]], unit: str) -> str:
    """'+2.5 [-1.0, +6.0]' (the difference and its interval)."""
    if not c or c.get("diff") is None:
        return "n/a"
    lo, hi = c["ci"]
    return f"{fmt_diff(c['diff'], unit)} [{fmt_diff(lo, unit)}, {fmt_diff(hi, unit)}]"


def verdict(c: Optional[Dict[str, Any]]) -> str:
    """What a change's interval says, in words: a gain or a loss only when the interval excludes 0."""
    if not c or c.get("diff") is None:
        return "not measured"
    lo, hi = c["ci"]
    if lo > 0:
        return "a measured gain (interval above 0)"
    if hi < 0:
        return "a measured loss (interval below 0)"
    return "no measurable change (interval includes 0)"


def ordered_runs(runs: Sequence[str]) -> List[str]:
    return [r for r in RUN_ORDER if r in runs] + sorted(r for r in runs if r not in RUN_ORDER)


def benchmark_tables(b: Dict[str, Any], confidence: float = 0.95) -> List[Tuple[str, List[List[str]]]]:
    """One table per metric: rows = the benchmark's rows; columns = runs, then each comparison's change
    with its paired-bootstrap interval; then the unparsed counts."""
    runs = ordered_runs(list(b["runs"]))
    unit = b["unit"]
    out = []
    for m in b["metrics"]:
        head = [m] + [RUN_LABELS.get(r, r) for r in runs] + [f"{c['name']} [{int(confidence * 100)}% CI]"
                                                            for c in b["comparisons"]]
        rows = [head]
        for row in b["rows"]:
            cells = [row] + [fmt_value(b["runs"][r]["metrics"][m]["rows"].get(row), unit) for r in runs]
            cells += [fmt_change(c[m]["rows"].get(row), unit) for c in b["comparisons"]]
            rows.append(cells)
        if m == b["metrics"][0]:
            rows.append(["images (unparsed)"] + [f"{b['runs'][r]['items']} ({b['runs'][r]['unparsed']})" for r in runs]
                        + [f"{c[m]['prompts']} prompts paired" for c in b["comparisons"]])
            if any(b["runs"][r].get("judge_agreement") is not None for r in runs):
                rows.append(["model's judge agrees"] + [fmt_value(b["runs"][r].get("judge_agreement"), "%")
                                                        for r in runs] + [""] * len(b["comparisons"]))
        out.append((m, rows))
    return out


def unparsed_table(b: Dict[str, Any]) -> List[List[str]]:
    runs = ordered_runs(list(b["runs"]))
    cats = sorted({c for r in runs for c in b["runs"][r]["unparsed_by_category"]})
    rows = [["unparsed answers"] + [RUN_LABELS.get(r, r) for r in runs]]
    for c in cats:
        rows.append([c] + [str(b["runs"][r]["unparsed_by_category"].get(c, 0)) for r in runs])
    return rows if cats else []


def understanding_table(u: Dict[str, Any], confidence: float = 0.95) -> List[List[str]]:
    variants = [v for v in ("base", "trained") if v in u["runs"]]
    comp = u.get("comparison") or {}
    rows = [["category"] + variants + ([f"trained - base [{int(confidence * 100)}% CI]"] if comp else [])]
    table_rows = next(iter(u["runs"].values()))["metrics"]["accuracy"]["rows"] if u["runs"] else {}
    for row in [r for r in table_rows if r != "overall"] + ["overall"]:
        cells = [row] + [fmt_value(u["runs"][v]["metrics"]["accuracy"]["rows"].get(row), "%") for v in variants]
        if comp:
            cells.append(fmt_change(comp["rows"].get(row), "%"))
        rows.append(cells)
    rows.append(["accuracy+ (MME pairs)"] + [fmt_value(u["runs"][v].get("accuracy_plus"), "%") for v in variants]
                + ([""] if comp else []))
    rows.append(["items (unparsed)"] + [f"{u['runs'][v]['items']} ({u['runs'][v]['unparsed']})" for v in variants]
                + ([""] if comp else []))
    return rows


def headline_lines(h: Dict[str, Any], round: int) -> List[str]:
    """What `srum run` prints: the headline metric base vs trained, plain and think, with intervals."""
    if not h:
        return ["no benchmark results"]
    unit, runs = h["unit"], h["runs"]
    pct = int(100 * (h.get("confidence") or 0.95))
    any_run = next(iter(runs.values()))
    lines = [f"{h['title']}: {h['metric']} over {any_run['items']} held-out images per run"]

    def cell(r: str) -> str:
        return fmt_value(runs[r]["overall"], unit) if r in runs else "n/a"
    lines.append(f"  base                        plain {cell('base/plain'):>7}   think {cell('base/think'):>7}")
    lines.append(f"  after SRUM round {round:<10} plain {cell('trained/plain'):>7}   think {cell('trained/think'):>7}")
    for name, c in h["changes"].items():
        lines.append(f"  {name}: {fmt_change(c, unit)} ({pct}% paired bootstrap CI, {c['prompts']} prompts): "
                     f"{verdict(c)}")
    for run, why in (h.get("skipped") or {}).items():
        lines.append(f"  {run}: not evaluated ({why})")
    unparsed = sum(r["unparsed"] for r in runs.values())
    if unparsed:
        lines.append(f"  unparsed evaluator answers (excluded): {unparsed}")
    agree = [(r, v["judge_agreement"]) for r, v in runs.items() if v.get("judge_agreement") is not None]
    if agree:
        lines.append("  model's judge agrees with the benchmark: "
                     + ", ".join(f"{fmt_value(a, '%')} ({RUN_LABELS.get(r, r)})" for r, a in agree))
    return lines
