"""The eval stage's core: for one shard, every (benchmark, variant, mode) run generates its images and has
the srum_evaluator model score them with the benchmark's protocol, item by item.

Resumable per item: an item is done when its JSON object exists (written after its image), so an
interrupted shard continues where it stopped and a rerun never regenerates or re-judges a finished item
(the evaluator's answers are also in the judgment cache). When every item of a run is there, the run's
results.jsonl (+ checksum) is written and the items are not read again.

Images of base and trained, plain and think share their seeds (eval.seed, prompt index, sample), so a
comparison is paired: same prompt, same noise, different weights or mode.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..judging.pipeline import ask as ask_with_retries
from ..judging.protocols import JudgeParams
from ..prompts import PromptError, load_prompts
from ..records import Prompt, read_records
from ..storage import png_bytes, sha256_hex
from .protocol import Answer, Benchmark

VARIANTS = ("base", "trained")


@dataclass(frozen=True)
class Run:
    benchmark: str
    variant: str
    mode: str

    @property
    def name(self) -> str:
        return f"{self.variant}/{self.mode}"

    def area(self) -> str:
        return f"eval/{self.benchmark}/{self.variant}/{self.mode}"


def run_prefix(layout: Any, run: Run, shard: int) -> str:
    return layout.shard_prefix(run.area(), shard)


def results_key(layout: Any, run: Run, shard: int) -> str:
    return run_prefix(layout, run, shard) + "results.jsonl"


def item_name(prompt: Prompt, sample: int) -> str:
    return f"{prompt.index:06d}-{sample}"


def summary_key(layout: Any) -> str:
    return layout.key("eval", "summary.json")


# ------------------------------------------------------------------------------------------- prompts


def benchmark_prompts(ctx: Any, bcfg: Any, bench: Benchmark) -> List[Prompt]:
    """The benchmark's prompt list, frozen in storage on first use (every shard and rerun agrees)."""
    key = ctx.layout.key("eval", bcfg.name, "prompts.jsonl")
    if ctx.store.is_complete(key):
        return list(read_records(ctx.store.get_text(key, verify=True), Prompt, source=ctx.store.uri_for(key)))
    p = ctx.exp.prompts
    if bcfg.prompts is None:
        if not p.eval_source:
            raise PromptError(f"eval.benchmarks[{bcfg.name}] names no prompts and prompts.eval_source is not set")
        sources, limit = [p.eval_source], (bcfg.limit or p.eval_limit)
    else:
        sources, limit = ([bcfg.prompts] if isinstance(bcfg.prompts, str) else list(bcfg.prompts)), bcfg.limit
    prompts: List[Prompt] = []
    for src in sources:
        prompts += load_prompts(src, bcfg.format, storage=ctx.exp.storage)
    seen: Dict[str, str] = {}
    for q in prompts:
        if q.id in seen:
            raise PromptError(f"eval.benchmarks[{bcfg.name}]: prompt id {q.id!r} appears in more than one source")
        seen[q.id] = q.text
    if bcfg.categories:
        unknown = set(bcfg.categories) - {q.category for q in prompts}
        if unknown:
            raise PromptError(f"eval.benchmarks[{bcfg.name}].categories {sorted(unknown)} do not occur in "
                              f"{', '.join(sources)}")
        prompts = [q for q in prompts if q.category in set(bcfg.categories)]
    prompts = prompts[:limit] if limit else prompts
    prompts = [q.model_copy(update={"index": i}) for i, q in enumerate(prompts)]
    if not prompts:
        raise PromptError(f"eval.benchmarks[{bcfg.name}]: no prompts left in {', '.join(sources)}")
    try:
        bench.check_prompts(prompts, ", ".join(sources))
    except ValueError as e:
        raise PromptError(str(e)) from None
    ctx.store.put_jsonl(key, prompts, checksum=True)
    return prompts


# ------------------------------------------------------------------------------------------- scoring


class Scorer:
    """Asks the evaluator one benchmark's questions about one image, with parse retries, a shared bound on
    requests in flight, and greedy decoding."""

    def __init__(self, transport: Any, judge: Any, max_new_tokens: int):
        self.transport = transport
        self.attempts = judge.parse_attempts
        self.params = JudgeParams(max_new_tokens=max_new_tokens, temperature=0.0, think=False)
        self.limiter = asyncio.Semaphore(judge.max_in_flight)

    async def ask(self, image_png: bytes, key: str, instruction: str, parse: Callable[[str], Any]) -> Answer:
        """One question; re-asked (with a format reminder) while unreadable, up to judge.parse_attempts."""
        res, raw, made = await ask_with_retries(self.transport, image_png, instruction, self.params, parse,
                                                lambda r: int(bool(r.parsed)), 1, self.attempts, self.limiter)
        return Answer(parsed=bool(res.parsed), value=res.value, text=raw, attempts=made)

    async def score(self, bench: Benchmark, prompt: Prompt, image_png: bytes):
        return await bench.score(lambda key, ins, parse: self.ask(image_png, key, ins, parse), prompt)


# ----------------------------------------------------------------------------------------------- runs


@dataclass
class RunSpec:
    run: Run
    bench: Benchmark
    prompts: Sequence[Prompt]
    samples: int


def done_items(store: Any, prefix: str) -> Dict[str, dict]:
    out = {}
    for key in store.list(prefix + "items/"):
        if key.endswith(".json"):
            out[key.rsplit("/", 1)[-1][:-len(".json")]] = store.get_json(key)
    return out


def run_complete(store: Any, layout: Any, run: Run, shard: int) -> bool:
    return store.is_complete(results_key(layout, run, shard))


async def evaluate_run(ctx: Any, spec: RunSpec, shard: int, model: Any, scorer: Scorer, *, seed_of: Callable,
                       think: bool, agreement: Optional[Callable] = None, bar: Any = None) -> List[dict]:
    """Generate and score every missing item of one run; write results.jsonl when all are there."""
    store, layout, g = ctx.store, ctx.layout, ctx.exp.generation
    prefix = run_prefix(layout, spec.run, shard)
    have = done_items(store, prefix)
    todo = [(p, s) for p in spec.prompts for s in range(spec.samples) if item_name(p, s) not in have]
    if bar is not None:
        bar.update(len(spec.prompts) * spec.samples - len(todo))
    pending: set = set()
    errors: List[BaseException] = []

    async def finish(p: Prompt, s: int, seed: int, image: Any, think_text: Optional[str], agrees: Any) -> None:
        try:
            png = png_bytes(image)
            image_key = prefix + f"images/{item_name(p, s)}.png"
            await asyncio.to_thread(store.put_bytes, image_key, png)
            result = await scorer.score(spec.bench, p, png)
            row = {"benchmark": spec.run.benchmark, "variant": spec.run.variant, "mode": spec.run.mode,
                   "prompt_id": p.id, "index": p.index, "prompt": p.text, "category": p.category, "sample": s,
                   "seed": seed, "image_key": image_key, "image_sha256": sha256_hex(png), "think_text": think_text,
                   "parsed": result.parsed, "values": result.values, "note": result.note,
                   "answers": result.answers, "judge_ok": agrees}
            await asyncio.to_thread(store.put_json, prefix + f"items/{item_name(p, s)}.json", row)
            have[item_name(p, s)] = row
            if bar is not None:
                bar.update(1)
        except BaseException as e:  # noqa: BLE001 - raised once below, after the other items stop
            errors.append(e)

    for i in range(0, len(todo), g.batch_size):
        batch = todo[i:i + g.batch_size]
        seeds = [seed_of(p, s) for p, s in batch]
        gen = await asyncio.to_thread(model.generate, [p.text for p, _ in batch], seeds, think=think, steps=g.steps,
                                      guidance=g.guidance, resolution=g.resolution)
        images = [x.image for x in gen]
        agrees = (await asyncio.to_thread(agreement, images, [p for p, _ in batch]) if agreement
                  else [None] * len(batch))
        # scoring this batch overlaps with generating the next one
        for (p, s), seed, x, img, ag in zip(batch, seeds, gen, images, agrees):
            t = asyncio.ensure_future(finish(p, s, seed, img, x.think_text, ag))
            pending.add(t)
            t.add_done_callback(pending.discard)
        if errors:
            break
        while len(pending) > 4 * g.batch_size:       # bound the images held in memory
            await asyncio.wait(list(pending), return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.gather(*list(pending))
    if errors:
        raise errors[0]
    rows = [have[item_name(p, s)] for p in spec.prompts for s in range(spec.samples)]
    store.put_jsonl(results_key(layout, spec.run, shard), rows, checksum=True)
    return rows


def read_results(store: Any, layout: Any, run: Run, shards: Sequence[int]) -> List[dict]:
    rows: List[dict] = []
    for s in shards:
        key = results_key(layout, run, s)
        if store.exists(key):
            rows += [json.loads(line) for line in store.get_text(key, verify=True).splitlines() if line]
    return sorted(rows, key=lambda r: (r["index"], r["sample"]))


def model_agreement(model: Any, exp: Any) -> Callable[[Sequence[Any], Sequence[Prompt]], List[Optional[bool]]]:
    """toy: does the model's own judge (global score > 0) agree with the benchmark's verdict? The verdict
    comes later from the evaluator, so this records the judge's side; the summary pairs the two."""
    from ..judging.parse import parse_global
    from ..judging.templates import load_templates

    templates = load_templates(exp.judge.templates_dir, exp.reward)

    def judge(images: Sequence[Any], prompts: Sequence[Prompt]) -> List[Optional[bool]]:
        answers = model.understand(list(images), [templates.render_global(p.text) for p in prompts],
                                   max_new_tokens=exp.judge.max_new_tokens)
        out: List[Optional[bool]] = []
        for text, _ in answers:
            r = parse_global(text)
            out.append(None if not r.parsed else bool(r.score > 0))
        return out
    return judge
