"""Stage 4, eval: the round's starting weights ("base") and its trained weights ("trained"), in plain and
(when the model supports it) think mode, on every benchmark of `eval.benchmarks`, scored by the
srum_evaluator model (never the model being trained; evaluation/evaluator.py refuses otherwise), plus the
understanding-regression check through the model's own `understand`, and, on shard 0, the paper's
analyses when enabled. Benchmarks, their protocols and the statistics live in srum_jobs/evaluation/.

Shard i of N takes the prompts (and VQA items) whose index % N == i. Every item is resumable on its own
(evaluation/run.py); the shard's marker is written last; the shard that completes the set writes
eval/summary.json.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

from ..config import Experiment
from ..evaluation import load_benchmark
from ..evaluation.evaluator import check_evaluator, evaluator_transport
from ..evaluation.run import (VARIANTS, Run, RunSpec, Scorer, benchmark_prompts, evaluate_run, model_agreement,
                              run_complete, summary_key)
from ..prompts import shard_prompts
from .common import StageContext, candidate_seed, load_round_model
from .progress import progress_bar

THINK_UNSUPPORTED = "the model does not support think mode"


def understanding_key(ctx: StageContext, variant: str, shard: int) -> str:
    return ctx.layout.shard_prefix(f"eval/understanding/{variant}", shard) + "results.jsonl"


def run(exp: Experiment, round: int, shard: int = 0, num_shards: int = 1, *, progress: bool = True) -> Dict[str, Any]:
    ctx = StageContext.create(exp, round)
    if ctx.layout.shard_done("eval", shard):
        ctx.say(f"eval shard {shard}: already complete")
        return ctx.layout.marker("eval", shard) or {}
    check_evaluator(exp)
    specs = _plan(ctx, shard, num_shards)
    skipped: Dict[str, str] = {}
    items = 0
    for variant in VARIANTS:
        todo = [s for s in specs[variant] if not run_complete(ctx.store, ctx.layout, s.run, shard)]
        vqa_todo = exp.eval.understanding.enabled and not ctx.store.is_complete(understanding_key(ctx, variant, shard))
        if not todo and not vqa_todo:
            continue
        model = load_round_model(ctx) if variant == "base" else load_round_model(ctx, trained_round=round)
        if not model.supports_think:
            skipped["think"] = THINK_UNSUPPORTED
            todo = [s for s in todo if s.run.mode != "think"]
        items += _evaluate(ctx, model, variant, todo, shard, progress)
        if vqa_todo:
            _understanding(ctx, model, variant, shard, num_shards)
    if shard == 0 and (exp.eval.per_step.enabled or exp.eval.clusters.enabled):
        from ..evaluation.analyses import run_analyses

        run_analyses(ctx, progress=progress)
    ctx.layout.mark_done("eval", shard, items=items, skipped=skipped)
    if sorted(ctx.layout.stage_shards_done("eval")) == list(range(num_shards)):
        ctx.store.put_json(summary_key(ctx.layout), summarise(ctx))
    return ctx.layout.marker("eval", shard) or {}


def _plan(ctx: StageContext, shard: int, num_shards: int) -> Dict[str, List[RunSpec]]:
    exp = ctx.exp
    plan: Dict[str, List[RunSpec]] = {v: [] for v in VARIANTS}
    for bcfg in exp.eval.benchmarks:
        bench = load_benchmark(bcfg.name, exp.eval.templates_dir)
        prompts = shard_prompts(benchmark_prompts(ctx, bcfg, bench), shard, num_shards)
        samples = bcfg.samples_per_prompt or exp.eval.samples_per_prompt
        for variant in VARIANTS:
            plan[variant] += [RunSpec(Run(bcfg.name, variant, mode), bench, prompts, samples)
                              for mode in exp.eval.modes]
    return plan


def _evaluate(ctx: StageContext, model: Any, variant: str, specs: List[RunSpec], shard: int, progress: bool) -> int:
    exp = ctx.exp
    if not specs:
        return 0
    total = sum(len(s.prompts) * s.samples for s in specs)
    # the model's own judge next to the toy benchmark (does it agree with the rules?)
    agreement = model_agreement(model, exp) if exp.eval.judge_agreement and exp.model.adapter == "toy" else None

    async def go() -> None:
        async with evaluator_transport(exp, ctx.store, ctx.layout.cache_key) as transport:
            scorer = Scorer(transport, exp.judge, exp.eval.max_new_tokens)
            with progress_bar(total, f"eval {variant} shard {shard}", "img", enabled=progress) as bar:
                for s in specs:
                    # the same seeds for both variants and both modes: every comparison is paired
                    await evaluate_run(ctx, s, shard, model, scorer, think=s.run.mode == "think",
                                       seed_of=lambda p, k: candidate_seed(exp.eval.seed, 0, p.index, k),
                                       agreement=agreement if s.run.benchmark == "toy" else None, bar=bar)
    asyncio.run(go())
    return total


def _understanding(ctx: StageContext, model: Any, variant: str, shard: int, num_shards: int) -> None:
    from ..evaluation.understanding import Asker, answer_items, load_items, resolve_style

    cfg = ctx.exp.eval.understanding
    items = [it for it in load_items(cfg.source, ctx.exp.storage, cfg.limit) if it.index % num_shards == shard]
    asker = Asker(resolve_style(cfg.style, ctx.exp.model.adapter), ctx.exp)
    rows = answer_items(model, items, asker, ctx.exp.judge.max_new_tokens) if items else []
    ctx.store.put_jsonl(understanding_key(ctx, variant, shard), rows, checksum=True)


def summarise(ctx: StageContext) -> Dict[str, Any]:
    import json

    from ..evaluation.summary import benchmark_summary, headline
    from ..evaluation.understanding import summarise_understanding

    exp = ctx.exp
    shards = ctx.layout.stage_shards_done("eval")
    skipped: Dict[str, str] = {}
    for s in shards:
        skipped.update((ctx.layout.marker("eval", s) or {}).get("skipped", {}))
    out: Dict[str, Any] = {"confidence": exp.eval.confidence, "benchmarks": {}}
    for bcfg in exp.eval.benchmarks:
        out["benchmarks"][bcfg.name] = benchmark_summary(exp, ctx.store, ctx.layout, bcfg, shards, skipped)
    if exp.eval.understanding.enabled:
        rows: Dict[str, List[dict]] = {}
        for variant in VARIANTS:
            rows[variant] = []
            for s in shards:
                key = understanding_key(ctx, variant, s)
                if ctx.store.exists(key):
                    rows[variant] += [json.loads(x) for x in ctx.store.get_text(key, verify=True).splitlines() if x]
        out["understanding"] = summarise_understanding({v: r for v, r in rows.items() if r}, exp)
    if exp.eval.per_step.enabled or exp.eval.clusters.enabled:
        from ..evaluation.analyses import load_analyses

        out["analyses"] = load_analyses(ctx)
    out["headline"] = headline(out)
    return out
