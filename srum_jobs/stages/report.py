"""Stage 5, report: one self-contained HTML page (images and plots embedded) and a Markdown summary.

It reads only what the other stages left in storage, so it can run anywhere, any time after eval.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any, Dict, List, Optional

import numpy as np

from ..config import Experiment
from ..storage import NotFound
from .common import StageContext
from .evaluate import summary_key

MAX_GRID = 8


def _b64_png(fig_or_image: Any) -> str:
    buf = io.BytesIO()
    if hasattr(fig_or_image, "savefig"):
        fig_or_image.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig_or_image)
    else:
        fig_or_image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _results_table(summary: Dict[str, Any]) -> List[List[str]]:
    base, trained = summary["variants"]["base"], summary["variants"]["trained"]
    rows = [["category", "base", "trained", "change"]]
    for cat in sorted(set(base["per_category"]) | set(trained["per_category"])):
        b, t = base["per_category"].get(cat), trained["per_category"].get(cat)
        rows.append([cat, _fmt(b), _fmt(t), "n/a" if b is None or t is None else f"{100 * (t - b):+.1f}"])
    b, t = base["overall"], trained["overall"]
    rows.append(["overall", _fmt(b), _fmt(t), "n/a" if b is None or t is None else f"{100 * (t - b):+.1f}"])
    rows.append(["judge agrees with benchmark", _fmt(base["judge_agreement"]), _fmt(trained["judge_agreement"]), ""])
    return rows


def _md_table(rows: List[List[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _html_table(rows: List[List[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _eval_rows(ctx: StageContext, variant: str) -> List[dict]:
    from .evaluate import results_key

    rows = []
    for s in ctx.layout.stage_shards_done("eval"):
        rows += [json.loads(x) for x in ctx.store.get_text(results_key(ctx, variant, s)).splitlines() if x]
    return sorted(rows, key=lambda r: (r["index"], r["sample"]))


def _grid_figure(ctx: StageContext):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, trained = _eval_rows(ctx, "base"), _eval_rows(ctx, "trained")
    by_key = {(r["index"], r["sample"]): r for r in trained}
    pairs = [(b, by_key[(b["index"], b["sample"])]) for b in base if (b["index"], b["sample"]) in by_key]
    # spread the examples over categories rather than showing the first few prompts of one
    picked, seen = [], set()
    for b, t in pairs:
        if b["category"] not in seen or len(picked) < MAX_GRID // 2:
            picked.append((b, t))
            seen.add(b["category"])
        if len(picked) == MAX_GRID:
            break
    if not picked:
        return None
    fig, axes = plt.subplots(2, len(picked), figsize=(1.9 * len(picked), 4.4), squeeze=False)
    for j, (b, t) in enumerate(picked):
        for i, (row, label) in enumerate(((b, "base"), (t, "trained"))):
            ax = axes[i][j]
            ax.imshow(np.asarray(ctx.store.get_png(row["image_key"]).convert("RGB")), interpolation="nearest")
            ok = row["score"]
            ax.set_title(f"{label}: {'n/a' if ok is None else f'{ok:.2f}'}", fontsize=8,
                         color="green" if ok is not None and ok >= 0.5 else "crimson")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][j].set_xlabel("")
        axes[1][j].set_xlabel("\n".join(_wrap(b["prompt"], 22)), fontsize=7)
    fig.suptitle("Same prompts and seeds, before (top) and after (bottom) SRUM", fontsize=10)
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
    from .rewards import index_key

    entries = []
    for s in ctx.layout.stage_shards_done("rewards"):
        entries += [json.loads(x) for x in ctx.store.get_text(index_key(ctx, s)).splitlines() if x]
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

    from .train import load_metrics

    rows = load_metrics(ctx)
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
    lines = []
    try:
        summary = ctx.store.get_json(summary_key(ctx))
    except NotFound:
        return {"lines": [f"no evaluation summary at {ctx.store.uri_for(summary_key(ctx))}"]}
    b, t = summary["variants"]["base"], summary["variants"]["trained"]
    lines.append(f"benchmark ({summary['benchmark']}), {b['items']} held-out images each:")
    lines.append(f"  base {_fmt(b['overall'])}  ->  after SRUM round {ctx.round}: {_fmt(t['overall'])}")
    for cat in sorted(b["per_category"]):
        lines.append(f"    {cat:<14} {_fmt(b['per_category'][cat]):>7} -> {_fmt(t['per_category'].get(cat)):>7}")
    if b.get("judge_agreement") is not None:
        lines.append(f"  judge agrees with the benchmark: {_fmt(b['judge_agreement'])} (base), "
                     f"{_fmt(t['judge_agreement'])} (trained)")
    lines.append(f"report: {ctx.store.uri_for(ctx.layout.key('report', 'report.html'))}")
    return {"lines": lines, "summary": summary}


def run(exp: Experiment, round: int) -> str:
    ctx = StageContext.create(exp, round)
    where = ctx.store.uri_for(ctx.layout.key("report", "report.html"))
    if ctx.layout.shard_done("report", 0):
        ctx.say("report: already complete")
        return where
    summary = ctx.store.get_json(summary_key(ctx))
    table = _results_table(summary)
    stats = _rewards_stats(ctx)
    gen_markers = [ctx.layout.marker("generate", s) or {} for s in ctx.layout.stage_shards_done("generate")]
    n_records = max(1, stats.get("records", 0))
    unparsed = stats.get("global_unparsed", 0) / n_records
    figures = {"grid": _grid_figure(ctx), "maps": _reward_map_figure(ctx), "loss": _loss_figure(ctx)}
    images = {k: _b64_png(v) for k, v in figures.items() if v is not None}
    train = ctx.layout.marker("train", 0) or {}
    facts = [
        ("experiment", exp.name), ("round", str(round)), ("model", exp.model.adapter),
        ("reward mode", exp.reward.mode), ("lambda_c", str(exp.reward.lambda_c)),
        ("candidates", f"{stats.get('records', 0)} judged, {stats.get('used', 0)} used for training"),
        ("judge parse failures", f"{100 * unparsed:.1f}% global, "
                                 f"{100 * stats.get('regions_unparsed', 0) / n_records:.1f}% regions"),
        ("dropped", ", ".join(f"{k[len('dropped_'):]}: {v}" for k, v in stats.items() if k.startswith("dropped_")) or "none"),
        ("generate+judge wall time", f"{sum(m.get('wall_s', 0) for m in gen_markers):.0f} s"),
        ("training", f"{train.get('steps', '?')} steps on {train.get('world_size', '?')} process(es), "
                     f"{train.get('wall_s', 0):.0f} s"),
    ]
    md = [f"# SRUM report: {exp.name}, round {round}", "", _md_table(table), "",
          *[f"- **{k}**: {v}" for k, v in facts], "",
          "Images, reward maps and loss curves: see report.html beside this file."]
    sections = [f"<h1>SRUM report: {html.escape(exp.name)}, round {round}</h1>",
                f"<h2>Benchmark ({html.escape(summary['benchmark'])}), before and after</h2>", _html_table(table),
                "<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in facts) + "</ul>"]
    titles = {"grid": "Before and after", "maps": "Reward maps", "loss": "Training"}
    for k, src in images.items():
        sections.append(f"<h2>{titles[k]}</h2><img src='{src}' alt='{k}'>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>SRUM report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>"
            + "\n".join(sections) + "</body></html>")
    ctx.store.put_text(ctx.layout.key("report", "report.html"), page)
    ctx.store.put_text(ctx.layout.key("report", "report.md"), "\n".join(md) + "\n")
    ctx.layout.mark_done("report", 0)
    return where
