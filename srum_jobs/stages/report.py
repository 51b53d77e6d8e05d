"""Stage 5, report: one self-contained HTML page (images and plots embedded) and a Markdown summary.

It reads only what the other stages left in storage, so it can run anywhere, any time after eval.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Dict, List, Tuple

import numpy as np

from ..config import Experiment
from ..evaluation import tables
from ..evaluation.run import Run, read_results
from ..storage import NotFound
from .common import StageContext

MAX_GRID = 8
GRID_SEED = 20240917


def _b64_png(fig_or_image: Any) -> str:
    buf = io.BytesIO()
    if hasattr(fig_or_image, "savefig"):
        fig_or_image.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig_or_image)
    else:
        fig_or_image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _md_table(rows: List[List[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _html_table(rows: List[List[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(row: Dict[str, Any], metric: str, unit: str) -> Tuple[str, str]:
    """(text, colour) of one image's score: correct/wrong for a 0/1 metric, the value otherwise."""
    v = row["values"].get(metric) if row["parsed"] else None
    if v is None:
        return "unparsed", "gray"
    if v in (0.0, 1.0) and unit == "%":
        return ("correct", "green") if v == 1.0 else ("wrong", "crimson")
    return tables.fmt_value(v, unit), "black"


def _grid_figure(ctx: StageContext, summary: Dict[str, Any], mode: str = "plain"):
    """Same prompts and seeds before and after, picked at random (seeded) across categories: the examples
    are neither the best nor the worst, so the grid shows what a typical change looks like. In think mode
    each image carries the model's plan."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = summary.get("headline") or {}
    if not h:
        return None
    shards = ctx.layout.stage_shards_done("eval")
    base = read_results(ctx.store, ctx.layout, Run(h["benchmark"], "base", mode), shards)
    trained = read_results(ctx.store, ctx.layout, Run(h["benchmark"], "trained", mode), shards)
    by_key = {(r["index"], r["sample"]): r for r in trained}
    pairs = [(b, by_key[(b["index"], b["sample"])]) for b in base if (b["index"], b["sample"]) in by_key]
    if not pairs:
        return None
    rng = np.random.default_rng(GRID_SEED)
    by_cat: Dict[str, list] = {}
    for i in rng.permutation(len(pairs)):
        by_cat.setdefault(pairs[int(i)][0]["category"], []).append(pairs[int(i)])
    picked = []
    for depth in range(MAX_GRID):                 # round-robin over categories
        for cat in sorted(by_cat):
            if depth < len(by_cat[cat]) and len(picked) < MAX_GRID:
                picked.append(by_cat[cat][depth])
    metric, unit = h["metric"], h["unit"]
    think = mode == "think"
    fig, axes = plt.subplots(2, len(picked), figsize=(1.9 * len(picked), 6.2 if think else 4.6), squeeze=False)
    for j, (b, t) in enumerate(picked):
        for i, (row, label) in enumerate(((b, "base"), (t, "trained"))):
            ax = axes[i][j]
            ax.imshow(np.asarray(ctx.store.get_png(row["image_key"]).convert("RGB")), interpolation="nearest")
            text, color = _verdict(row, metric, unit)
            ax.set_title(f"{label}: {text}", fontsize=8, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
            if think and row.get("think_text"):
                ax.set_xlabel("\n".join(_wrap(row["think_text"][:90], 24)), fontsize=5.5, color="#555")
        label = "\n".join(_wrap(b["prompt"], 22))
        if think:
            axes[0][j].set_title(label + "\n" + axes[0][j].get_title(), fontsize=7)
        else:
            axes[1][j].set_xlabel(label, fontsize=7)
    fig.suptitle("Same prompts and seeds (picked at random), before (top) and after (bottom) SRUM"
                 + (", think mode: the plan under each image" if think else ""), fontsize=10)
    return fig


def _change_figure(b: Dict[str, Any], confidence: float):
    """Per row of the headline metric: trained - base with its paired bootstrap interval, per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [c for c in b["comparisons"] if c["name"].startswith("trained - base")]
    if not comps:
        return None
    m = b["metrics"][0]
    rows = [r for r in b["rows"] if any((c[m]["rows"].get(r) or {}).get("diff") is not None for c in comps)]
    if not rows:
        return None
    scale = 100.0 if b["unit"] == "%" else 1.0
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 3.2))
    width = 0.8 / len(comps)
    for k, c in enumerate(comps):
        xs, ys, lo, hi = [], [], [], []
        for i, r in enumerate(rows):
            cell = c[m]["rows"].get(r) or {}
            if cell.get("diff") is None:
                continue
            xs.append(i + (k - (len(comps) - 1) / 2) * width)
            ys.append(scale * cell["diff"])
            lo.append(scale * (cell["diff"] - cell["ci"][0]))
            hi.append(scale * (cell["ci"][1] - cell["diff"]))
        ax.bar(xs, ys, width=width * 0.9, yerr=[lo, hi], capsize=3, label=c["name"], alpha=0.8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(rows, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"change in {m}" + (" (points)" if b["unit"] == "%" else ""))
    ax.set_title(f"{b['title']}: trained - base, {int(confidence * 100)}% paired bootstrap intervals", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _wrap(text: str, width: int) -> List[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + [cur] if cur else lines


def _reward_map_figure(ctx: StageContext, n: int = 6):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..rewards import decode_map

    entries = []
    for s in ctx.layout.stage_shards_done("rewards"):
        entries += ctx.layout.rewards_index(s, verify=False)
    used = [e for e in entries if e["used"]]
    if not used:
        return None
    # show a spread of rewards: best, worst and middle
    used.sort(key=lambda e: e.get("mean_reward", 0.0))
    picks = [used[int(i)] for i in np.linspace(0, len(used) - 1, min(n, len(used)))]
    fig, axes = plt.subplots(1, len(picks), figsize=(2.1 * len(picks), 2.6), squeeze=False)
    for ax, e in zip(axes[0], picks):
        img = np.asarray(ctx.store.get_png(e["image_key"]).convert("RGB"))
        rmap = decode_map(ctx.store.get_bytes(e["map_key"], verify=True))
        ax.imshow(img, interpolation="nearest")
        im = ax.imshow(np.asarray(rmap.pixels, dtype=np.float32) * (rmap.alpha if ctx.exp.reward.mode == "signed" else 1),
                       cmap="RdYlGn", vmin=-1 if ctx.exp.reward.mode == "signed" else 0, vmax=1, alpha=0.55,
                       interpolation="nearest")
        ax.set_title(f"g={e['global_score']}", fontsize=8)
        ax.set_xlabel("\n".join(_wrap(e["prompt"], 22)), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.7)
    fig.suptitle(f"Reward maps ({ctx.exp.reward.mode} mode) over their images", fontsize=10)
    return fig


def _loss_figure(ctx: StageContext):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ctx.layout.metrics()
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    for name in ("loss", "reward_term", "reference_term"):
        if name in rows[0]:
            a.plot(steps, [r[name] for r in rows], label=name, lw=1)
    a.set_xlabel("step")
    a.set_title("SRUM loss and its parts")
    a.legend(fontsize=8)
    b.plot(steps, [r["lr"] for r in rows], color="gray")
    b.set_title("learning rate")
    b.set_xlabel("step")
    return fig


def _rewards_stats(ctx: StageContext) -> Dict[str, int]:
    totals: Dict[str, int] = {}
    for s in ctx.layout.stage_shards_done("rewards"):
        for k, v in (ctx.layout.marker("rewards", s) or {}).items():
            if isinstance(v, int) and k not in ("shard", "round"):
                totals[k] = totals.get(k, 0) + v
    return totals


def headline(ctx: StageContext) -> Dict[str, Any]:
    """What `srum run` prints at the end: where the report is and the headline numbers."""
    try:
        summary = ctx.layout.eval_summary()
    except NotFound:
        return {"lines": [f"no evaluation summary at {ctx.store.uri_for(ctx.layout.eval_summary_key)}"]}
    lines = tables.headline_lines(summary.get("headline") or {}, ctx.round)
    u = summary.get("understanding")
    if u and u.get("runs"):
        acc = {v: t["metrics"]["accuracy"]["rows"].get("overall") for v, t in u["runs"].items()}
        lines.append("  understanding (VQA) accuracy: " + ", ".join(f"{v} {tables.fmt_value(a, '%')}"
                                                                   for v, a in acc.items())
                     + (f"; trained - base {tables.fmt_change((u.get('comparison') or {}).get('rows', {}).get('overall'), '%')}"
                        if u.get("comparison") else ""))
    lines.append(f"report: {ctx.store.uri_for(ctx.layout.report_key('report.html'))}")
    return {"lines": lines, "summary": summary.get("headline")}


def _eval_sections(summary: Dict[str, Any], round: int) -> tuple:
    """(HTML parts, Markdown parts, figures) of the evaluation: every benchmark's tables, the unparsed
    counts, the understanding check, the analyses."""
    conf = summary.get("confidence") or 0.95
    html_parts, md_parts, figures = [], [], []
    h = summary.get("headline") or {}
    if h:
        lines = tables.headline_lines(h, round)
        html_parts.append("<pre class='headline'>" + html.escape("\n".join(lines)) + "</pre>")
        md_parts += ["```", *lines, "```", ""]
    for name, b in summary.get("benchmarks", {}).items():
        html_parts.append(f"<h2>{html.escape(b['title'])}</h2>")
        md_parts.append(f"## {b['title']}")
        for metric, rows in tables.benchmark_tables(b, conf):
            html_parts.append((f"<h3>{html.escape(metric)}</h3>" if len(b["metrics"]) > 1 else "") + _html_table(rows))
            md_parts += [f"### {metric}", "", _md_table(rows), ""]
        fig = _change_figure(b, conf)
        if fig is not None:
            html_parts.append(f"<img src='{_b64_png(fig)}' alt='change-{html.escape(name)}'>")
        unparsed = tables.unparsed_table(b)
        if unparsed:
            html_parts.append("<p>Unparsed evaluator answers (excluded from every mean), per category:</p>"
                              + _html_table(unparsed))
            md_parts += ["Unparsed evaluator answers per category:", "", _md_table(unparsed), ""]
        for run, why in b.get("skipped", {}).items():
            html_parts.append(f"<p><i>{html.escape(run)}: not evaluated ({html.escape(why)})</i></p>")
            md_parts.append(f"*{run}: not evaluated ({why})*")
    u = summary.get("understanding")
    if u and u.get("runs"):
        rows = tables.understanding_table(u, conf)
        html_parts.append("<h2>Understanding regression (VQA through the model's own understanding)</h2>"
                          + _html_table(rows))
        md_parts += ["## Understanding regression", "", _md_table(rows), ""]
    a = summary.get("analyses")
    if a:
        from ..evaluation.analyses import analysis_figures, analysis_tables

        for title, rows in analysis_tables(a):
            html_parts.append(f"<h2>{html.escape(title)}</h2>" + _html_table(rows))
            md_parts += [f"## {title}", "", _md_table(rows), ""]
        figures += analysis_figures(a)
    return html_parts, md_parts, figures


def run(exp: Experiment, round: int, shard: int = 0, num_shards: int = 1, *, progress: bool = True) -> str:
    """Write the round's report (one shard: the stage is not sharded); returns where it is."""
    ctx = StageContext.create(exp, round)
    where = ctx.store.uri_for(ctx.layout.report_key("report.html"))
    if ctx.layout.shard_done("report", 0):
        ctx.say("report: already complete")
        return where
    summary = ctx.layout.eval_summary()
    eval_html, eval_md, eval_figs = _eval_sections(summary, round)
    stats = _rewards_stats(ctx)
    gen_markers = [ctx.layout.marker("generate", s) or {} for s in ctx.layout.stage_shards_done("generate")]
    n_records = max(1, stats.get("records", 0))
    unparsed = stats.get("global_unparsed", 0) / n_records
    figures = [("grid", "Before and after", _grid_figure(ctx, summary)),
               ("grid-think", "Before and after, think mode", _grid_figure(ctx, summary, "think")), *eval_figs,
               ("maps", "Reward maps", _reward_map_figure(ctx)), ("loss", "Training", _loss_figure(ctx))]
    train = ctx.layout.marker("train", 0) or {}
    facts = [
        ("experiment", exp.name), ("round", str(round)), ("model", exp.model.adapter),
        ("evaluator", f"{exp.judge.evaluator_model} (local backend {exp.eval.evaluator_backend})"),
        ("reward mode", exp.reward.mode), ("lambda_c", str(exp.reward.lambda_c)),
        ("candidates", f"{stats.get('records', 0)} judged, {stats.get('used', 0)} used for training"),
        ("judge parse failures", f"{100 * unparsed:.1f}% global, "
                                 f"{100 * stats.get('regions_unparsed', 0) / n_records:.1f}% regions"),
        ("dropped", ", ".join(f"{k[len('dropped_'):]}: {v}" for k, v in stats.items() if k.startswith("dropped_")) or "none"),
        ("generate+judge wall time", f"{sum(m.get('wall_s', 0) for m in gen_markers):.0f} s"),
        ("training", f"{train.get('steps', '?')} steps on {train.get('world_size', '?')} process(es), "
                     f"{train.get('wall_s', 0):.0f} s"),
    ]
    if exp.model.adapter == "toy":
        # one small round on 200 prompts is noisy; say where the measured, multi-seed answer is
        facts.append(("toy world", "one round measured on one seed; the toy world's rounds over 3 seeds on held-out "
                                   "prompts, the paper's baselines, and what did and did not help are in the "
                                   "README, section 'The toy world'"))
    md = [f"# SRUM report: {exp.name}, round {round}", "", *eval_md,
          *[f"- **{k}**: {v}" for k, v in facts], "",
          "Images, plots, reward maps and loss curves: see report.html beside this file."]
    sections = [f"<h1>SRUM report: {html.escape(exp.name)}, round {round}</h1>", *eval_html,
                "<h2>Run</h2><ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                                             for k, v in facts) + "</ul>"]
    for key, title, fig in figures:
        if fig is not None:
            sections.append(f"<h2>{html.escape(title)}</h2><img src='{_b64_png(fig)}' alt='{html.escape(key)}'>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>SRUM report</title><style>"
            "body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 9px;"
            "text-align:right;font-size:14px}th{background:#f3f3f3}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
            "pre.headline{background:#f6f8fa;padding:0.8em;border-radius:4px}</style></head><body>"
            + "\n".join(sections) + "</body></html>")
    ctx.store.put_text(ctx.layout.report_key("report.html"), page)
    ctx.store.put_text(ctx.layout.report_key("report.md"), "\n".join(md) + "\n")
    ctx.layout.mark_done("report", 0)
    return where
