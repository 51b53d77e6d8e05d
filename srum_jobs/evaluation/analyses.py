"""The paper's two analyses, for a list of named checkpoints (base and trained always; more from
`eval.per_step.checkpoints` / `eval.clusters.checkpoints`, e.g. SFT and sample-reward runs).

(a) Per-step scoring (paper, Fig. 4): at chosen sampling steps, the image the sampler predicts
    (x0 = x_t - t v, decoded) is scored by the srum_evaluator model for *layout* and for *detail*
    (evaluation/templates/step_layout.txt, step_detail.txt: 0-100, read whole; unreadable answers are
    unparsed and counted). The curve per checkpoint shows at which steps a method changes the picture.
    Needs the adapter method `predicted_x0` (models/base.py: toy, diffusers and bagel have it).

(b) Functional clusters (paper, Appendix B, Algorithm 1). The paper's text of the algorithm was not
    available to us; this is our reading of it, stated so it can be checked: record the mean absolute
    activation of every unit (an output channel of a Linear or convolution layer) over a set of
    understanding tasks (the understanding-regression items through `understand`) and a set of generation
    tasks (benchmark prompts through `generate`); on the *base* checkpoint, describe each unit by its
    specialisation (A_und - A_gen) / (A_und + A_gen) and its log strength, and group the units into K
    clusters with k-means (fixed seed); then, for every checkpoint, report each cluster's mean activation
    strength on understanding and on generation tasks. Units come from the adapter's
    `activation_modules()` when it has one, else from every Linear/Conv layer reachable from the model.

Both run in the eval stage's shard 0 (they are small) and are resumable per checkpoint: each writes
eval/analyses/<analysis>/<checkpoint>.json when done.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..records import Prompt

PER_STEP = "per_step"
CLUSTERS = "clusters"


def _key(ctx: Any, analysis: str, name: str) -> str:
    return ctx.layout.key("eval", "analyses", analysis, f"{name}.json")


def checkpoints(ctx: Any, extra: Dict[str, str]) -> List[Tuple[str, Any]]:
    """(name, loader) for base, trained and the configured extra checkpoints."""
    from ..models.base import load_model
    from ..stages.common import load_round_model

    out: List[Tuple[str, Any]] = [("base", lambda: load_round_model(ctx)),
                                  ("trained", lambda: load_round_model(ctx, trained_round=ctx.round))]
    for name, path in extra.items():
        if name in ("base", "trained"):
            raise ValueError(f"analysis checkpoint name {name!r} is reserved (base and trained are always included)")
        out.append((name, lambda p=path: load_model(ctx.exp.model.adapter, ctx.exp.model.params, p)))
    return out


def default_steps(total: int, n: int = 5) -> List[int]:
    return sorted({max(1, int(round(x))) for x in np.linspace(1, total, n)})


def _analysis_prompts(ctx: Any, limit: int) -> List[Prompt]:
    from . import load_benchmark
    from .run import benchmark_prompts

    bcfg = ctx.exp.eval.benchmarks[0]
    return benchmark_prompts(ctx, bcfg, load_benchmark(bcfg.name, ctx.exp.eval.templates_dir))[:limit]


# ------------------------------------------------------------------------------------------ per step


async def _score_steps(ctx: Any, images: Dict[int, List[Any]], prompts: Sequence[Prompt]) -> Dict[str, Any]:
    """Layout and detail scores (0-100) of every predicted image, by the evaluator; means per step."""
    from ..storage import png_bytes
    from .compbench import parse_compbench
    from .evaluator import evaluator_transport
    from .protocol import TemplateSet, spec
    from .run import Scorer

    templates = TemplateSet({"step_layout": spec(["prompt"]), "step_detail": spec(["prompt"])},
                            ctx.exp.eval.templates_dir)
    async with evaluator_transport(ctx.exp, ctx.store, ctx.layout.cache_key) as transport:
        scorer = Scorer(transport, ctx.exp.judge, ctx.exp.eval.max_new_tokens)

        async def one(step: int, img: Any, p: Prompt) -> Tuple[int, Dict[str, Optional[float]]]:
            png = png_bytes(img)
            res: Dict[str, Optional[float]] = {}
            for aspect in ("layout", "detail"):
                a = await scorer.ask(png, aspect, templates.render(f"step_{aspect}", prompt=p.text), parse_compbench)
                res[aspect] = a.value if a.parsed else None
            return step, res

        results = await asyncio.gather(*(one(step, img, p) for step, imgs in images.items()
                                         for img, p in zip(imgs, prompts)))
    per: Dict[str, Any] = {}
    for step, res in results:
        cell = per.setdefault(str(step), {"layout": [], "detail": [], "unparsed": 0})
        for aspect, v in res.items():
            if v is None:
                cell["unparsed"] += 1
            else:
                cell[aspect].append(v)
    return {s: {"layout": float(np.mean(c["layout"])) if c["layout"] else None,
                "detail": float(np.mean(c["detail"])) if c["detail"] else None,
                "n": len(prompts), "unparsed": c["unparsed"]} for s, c in per.items()}


def run_per_step(ctx: Any, progress: bool = True) -> None:
    from ..stages.common import candidate_seed

    cfg, g = ctx.exp.eval.per_step, ctx.exp.generation
    prompts = _analysis_prompts(ctx, cfg.prompts)
    steps = sorted(set(cfg.steps)) or default_steps(g.steps)
    for name, load in checkpoints(ctx, cfg.checkpoints):
        key = _key(ctx, PER_STEP, name)
        if ctx.store.exists(key):
            continue
        model = load()
        if not hasattr(model, "predicted_x0"):
            raise ValueError(f"eval.per_step: the {ctx.exp.model.adapter} adapter has no predicted_x0 method "
                             "(models/base.py: PerStepModel)")
        seeds = [candidate_seed(ctx.exp.eval.seed, 0, p.index, 0) for p in prompts]
        images = model.predicted_x0([p.text for p in prompts], seeds, steps=g.steps, guidance=g.guidance,
                                    at_steps=steps, resolution=g.resolution)
        scores = asyncio.run(_score_steps(ctx, images, prompts))
        ctx.store.put_json(key, {"checkpoint": name, "steps": steps, "total_steps": g.steps, "scores": scores})
        ctx.say(f"per-step analysis: {name} done")


# ------------------------------------------------------------------------------------------- clusters


def _units(model: Any) -> Dict[str, Any]:
    import torch

    if hasattr(model, "activation_modules"):
        return dict(model.activation_modules())
    found: Dict[str, Any] = {}
    seen: set = set()

    def walk(obj: Any, prefix: str, depth: int) -> None:
        if depth > 3 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            for n, m in obj.named_modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d)) and id(m) not in seen:
                    seen.add(id(m))
                    found[f"{prefix}.{n}" if n else prefix] = m
            return
        for attr, value in list(vars(obj).items()) if hasattr(obj, "__dict__") else []:
            if not attr.startswith("__"):
                walk(value, f"{prefix}.{attr}" if prefix else attr, depth + 1)

    walk(model, "", 0)
    return found


class ActivationRecorder:
    """Mean |activation| per unit of the given modules, accumulated while it is active."""

    def __init__(self, modules: Dict[str, Any]):
        import torch

        self.modules = modules
        self.sums: Dict[str, Any] = {}
        self.counts: Dict[str, float] = {}
        self._handles: List[Any] = []
        self._torch = torch

    def _hook(self, name: str, conv: bool):
        def hook(module, args, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, self._torch.Tensor) or out.dim() < 2:
                return
            a = out.detach().float().abs()
            a = a.movedim(1, -1) if conv else a
            flat = a.reshape(-1, a.shape[-1])
            s = flat.sum(0).cpu()
            self.sums[name] = s if name not in self.sums else self.sums[name] + s
            self.counts[name] = self.counts.get(name, 0.0) + flat.shape[0]
        return hook

    def __enter__(self) -> "ActivationRecorder":
        nn = self._torch.nn
        for name, m in self.modules.items():
            conv = isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
            self._handles.append(m.register_forward_hook(self._hook(name, conv)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def vector(self, names: Sequence[str], sizes: Dict[str, int]) -> np.ndarray:
        """All units of `names` in order; a module that never ran (e.g. the generator during an
        understanding task) contributes zeros."""
        parts = []
        for n in names:
            if n in self.sums:
                parts.append((self.sums[n] / self.counts[n]).numpy())
            else:
                parts.append(np.zeros(sizes[n]))
        return np.concatenate(parts) if parts else np.zeros(0)


def _out_size(m: Any) -> int:
    return int(getattr(m, "out_features", None) or getattr(m, "out_channels"))


def measure(model: Any, und_items: Sequence[Any], instructions: Sequence[str], prompts: Sequence[Prompt],
            seeds: Sequence[int], gen_kwargs: Dict[str, Any], max_new_tokens: int) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(A_und, A_gen, module names): mean |activation| per unit over understanding and generation tasks."""
    modules = _units(model)
    names = sorted(modules)
    sizes = {n: _out_size(modules[n]) for n in names}
    with ActivationRecorder(modules) as und:
        model.understand([it.image for it in und_items], list(instructions), max_new_tokens=max_new_tokens)
    with ActivationRecorder(modules) as gen:
        model.generate([p.text for p in prompts], list(seeds), **gen_kwargs)
    return und.vector(names, sizes), gen.vector(names, sizes), names


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    """Labels of Lloyd's k-means with k-means++ seeding (deterministic in `seed`)."""
    rng = np.random.default_rng(seed)
    k = min(k, len(x))
    centres = [x[int(rng.integers(len(x)))]]
    for _ in range(1, k):
        d = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[int(rng.choice(len(x), p=d / d.sum()))] if d.sum() > 0 else x[int(rng.integers(len(x)))])
    c = np.stack(centres)
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iters):
        new = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = x[labels == j].mean(0)
    return labels


def cluster_units(a_und: np.ndarray, a_gen: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster labels from the base checkpoint's profiles, renumbered from most understanding-specific
    (0) to most generation-specific; -1 for units that never ran in either task (left out)."""
    total = a_und + a_gen
    active = total > 0
    labels = np.full(len(total), -1, dtype=int)
    if not active.any():
        return labels
    spec = (a_und[active] - a_gen[active]) / total[active]
    strength = np.log(total[active])
    feats = np.stack([spec, (strength - strength.mean()) / (strength.std() + 1e-12) * 0.5], 1)
    got = kmeans(feats, k, seed)
    order = sorted(set(got), key=lambda j: -spec[got == j].mean())
    remap = {old: new for new, old in enumerate(order)}
    labels[active] = [remap[j] for j in got]
    return labels


def run_clusters(ctx: Any, progress: bool = True) -> None:
    from ..stages.common import candidate_seed
    from .understanding import Asker, load_items, resolve_style

    cfg, g, exp = ctx.exp.eval.clusters, ctx.exp.generation, ctx.exp
    items = load_items(exp.eval.understanding.source, exp.storage, cfg.inputs)
    asker = Asker(resolve_style(exp.eval.understanding.style, exp.model.adapter), exp)
    instructions = [asker.instructions(it)[0] for it in items]
    prompts = _analysis_prompts(ctx, cfg.inputs)
    seeds = [candidate_seed(exp.eval.seed, 0, p.index, 0) for p in prompts]
    gen_kwargs = dict(steps=g.steps, guidance=g.guidance, resolution=g.resolution)
    labels: Optional[np.ndarray] = None
    labels_key = _key(ctx, CLUSTERS, "_units")
    if ctx.store.exists(labels_key):
        labels = np.asarray(ctx.store.get_json(labels_key)["labels"])
    for name, load in checkpoints(ctx, cfg.checkpoints):
        key = _key(ctx, CLUSTERS, name)
        if ctx.store.exists(key):
            continue
        model = load()
        a_und, a_gen, modules = measure(model, items, instructions, prompts, seeds, gen_kwargs, exp.judge.max_new_tokens)
        if labels is None:
            if name != "base":
                raise RuntimeError("cluster analysis: the base checkpoint defines the clusters and must run first")
            labels = cluster_units(a_und, a_gen, cfg.clusters, exp.eval.seed)
            ctx.store.put_json(labels_key, {"labels": labels.tolist(), "modules": modules, "units": int(len(labels))})
        if len(labels) != len(a_und):
            raise RuntimeError(f"cluster analysis: checkpoint {name} has {len(a_und)} units, the base has {len(labels)}")
        rows = []
        for j in range(int(labels.max()) + 1):
            m = labels == j
            u, gg = float(a_und[m].mean()), float(a_gen[m].mean())
            rows.append({"cluster": j, "units": int(m.sum()), "understanding": u, "generation": gg,
                         "specialisation": (u - gg) / (u + gg) if u + gg > 0 else 0.0})
        ctx.store.put_json(key, {"checkpoint": name, "clusters": rows, "units": int(len(labels)),
                                 "inactive_units": int((labels < 0).sum()),
                                 "tasks": {"understanding": len(items), "generation": len(prompts)}})
        ctx.say(f"cluster analysis: {name} done")


# ------------------------------------------------------------------------------------------ driving


def run_analyses(ctx: Any, progress: bool = True) -> None:
    if ctx.exp.eval.per_step.enabled:
        run_per_step(ctx, progress)
    if ctx.exp.eval.clusters.enabled:
        run_clusters(ctx, progress)


def load_analyses(ctx: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for analysis in (PER_STEP, CLUSTERS):
        prefix = ctx.layout.key("eval", "analyses", analysis) + "/"
        found = {}
        for k in ctx.store.list(prefix):
            name = k.rsplit("/", 1)[-1][:-len(".json")]
            if not name.startswith("_"):
                found[name] = ctx.store.get_json(k)
        if found:
            out[analysis] = found
    return out


def analysis_tables(a: Dict[str, Any]) -> List[Tuple[str, List[List[str]]]]:
    out = []
    if a.get(PER_STEP):
        per = a[PER_STEP]
        steps = next(iter(per.values()))["steps"]
        total = next(iter(per.values()))["total_steps"]
        head = ["checkpoint"] + [f"step {s}/{total} layout | detail" for s in steps]
        rows = [head]
        for name, r in per.items():
            cells = [name]
            for s in steps:
                c = r["scores"].get(str(s), {})
                fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
                cells.append(f"{fmt(c.get('layout'))} | {fmt(c.get('detail'))}"
                             + (f" ({c['unparsed']} unparsed)" if c.get("unparsed") else ""))
            rows.append(cells)
        out.append(("Per-step scores of the predicted image (paper, Fig. 4; evaluator, 0-100)", rows))
    if a.get(CLUSTERS):
        cl = a[CLUSTERS]
        first = next(iter(cl.values()))
        head = ["cluster (units)"] + [f"{n}: und | gen" for n in cl]
        rows = [head]
        for j, c in enumerate(first["clusters"]):
            cells = [f"{j} ({c['units']}, spec {c['specialisation']:+.2f})"]
            for n, r in cl.items():
                x = r["clusters"][j]
                cells.append(f"{x['understanding']:.3g} | {x['generation']:.3g}")
            rows.append(cells)
        out.append(("Mean activation strength of functional clusters, understanding vs generation tasks "
                    "(our reading of the paper's Appendix B)", rows))
    return out


def analysis_figures(a: Dict[str, Any]) -> List[Tuple[str, str, Any]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    if a.get(PER_STEP):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for name, r in a[PER_STEP].items():
            steps = r["steps"]
            for ax, aspect in zip(axes, ("layout", "detail")):
                ys = [r["scores"].get(str(s), {}).get(aspect) for s in steps]
                ax.plot(steps, [math.nan if y is None else y for y in ys], marker="o", label=name)
        for ax, aspect in zip(axes, ("layout", "detail")):
            ax.set_xlabel("sampling step")
            ax.set_ylabel(f"{aspect} score (0-100)")
            ax.set_title(f"{aspect} of the predicted image per step", fontsize=9)
            ax.legend(fontsize=7)
        figs.append(("per-step", "Per-step scoring", fig))
    if a.get(CLUSTERS):
        cl = a[CLUSTERS]
        k = len(next(iter(cl.values()))["clusters"])
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=False)
        width = 0.8 / len(cl)
        for i, (name, r) in enumerate(cl.items()):
            xs = np.arange(k) + (i - (len(cl) - 1) / 2) * width
            axes[0].bar(xs, [c["understanding"] for c in r["clusters"]], width * 0.9, label=name)
            axes[1].bar(xs, [c["generation"] for c in r["clusters"]], width * 0.9, label=name)
        for ax, what in zip(axes, ("understanding", "generation")):
            ax.set_xlabel("cluster (0 = most understanding-specific)")
            ax.set_ylabel("mean |activation|")
            ax.set_title(f"{what} tasks", fontsize=9)
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        figs.append(("clusters", "Functional clusters", fig))
    return figs
