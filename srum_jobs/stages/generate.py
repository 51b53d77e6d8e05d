"""Stage 1, generate: K candidates per prompt of one shard, boxed and judged by the judge server.

Generation (the model, on this process's device) and judging (the Triton server, over gRPC) overlap:
a generator thread fills a small queue with finished batches while the event loop sends the previous
ones to the judge. Each finished candidate is written as its own object (image, then record), so a
killed pod resumes where it stopped and a rerun of a finished shard does nothing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Dict, List, Sequence, Tuple

from ..config import Experiment
from ..prompts import shard_prompts
from ..records import Prompt, RewardRecord, parse_record
from ..storage import png_bytes, sha256_hex
from .common import StageContext, candidate_seed, load_round_model, round_prompts
from .progress import _secs, progress_bar

Item = Tuple[Prompt, int]


def image_key(ctx: StageContext, shard: int, prompt: Prompt, k: int) -> str:
    return ctx.layout.shard_prefix("candidates", shard) + f"{prompt.index:06d}/{k}.png"


def item_key(ctx: StageContext, shard: int, prompt: Prompt, k: int) -> str:
    return ctx.layout.shard_prefix("judgments", shard) + f"items/{prompt.index:06d}-{k}.json"


def records_key(ctx: StageContext, shard: int) -> str:
    return ctx.layout.shard_prefix("judgments", shard) + "records.jsonl"


def _chunks(seq: Sequence, n: int):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


async def _generate_and_judge(ctx: StageContext, shard: int, todo: List[Item], model: Any, judge_fn,
                              bar) -> Dict[str, float]:
    """Overlap: the generator thread runs batch b+1 while batch b is being judged."""
    g = ctx.exp.generation
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue = asyncio.Queue(maxsize=2)
    timing = {"generate_s": 0.0, "judge_wait_s": 0.0}
    stop = threading.Event()

    def producer() -> None:
        try:
            for batch in _chunks(todo, g.batch_size):
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                seeds = [candidate_seed(g.seed, ctx.round, p.index, k) for p, k in batch]
                images = model.generate([p.text for p, _ in batch], seeds, think=g.think and model.supports_think,
                                        steps=g.steps, guidance=g.guidance, resolution=g.resolution)
                timing["generate_s"] += time.perf_counter() - t0
                fut = asyncio.run_coroutine_threadsafe(ready.put((batch, seeds, images)), loop)
                fut.result()
        except BaseException as e:  # surface generator errors in the event loop instead of hanging it
            asyncio.run_coroutine_threadsafe(ready.put(e), loop).result()
            return
        asyncio.run_coroutine_threadsafe(ready.put(None), loop).result()

    thread = threading.Thread(target=producer, name="srum-generate", daemon=True)
    thread.start()
    in_flight = asyncio.Semaphore(ctx.exp.judge.max_in_flight)
    tasks: List[asyncio.Task] = []

    async def one(prompt: Prompt, k: int, seed: int, generated: Any) -> None:
        async with in_flight:
            png = png_bytes(generated.image)
            ikey = image_key(ctx, shard, prompt, k)
            await asyncio.to_thread(ctx.store.put_bytes, ikey, png)
            record = await judge_fn(png, prompt, k, seed, ikey, sha256_hex(png), generated.image.size,
                                    generated.think_text)
            # the record is written last: its presence means the candidate is completely done
            await asyncio.to_thread(ctx.store.put_text, item_key(ctx, shard, prompt, k), record.to_json_line())
            bar.update(1)

    try:
        while True:
            t0 = time.perf_counter()
            got = await ready.get()
            timing["judge_wait_s"] += time.perf_counter() - t0
            if got is None:
                break
            if isinstance(got, BaseException):
                raise got
            batch, seeds, images = got
            for (prompt, k), seed, img in zip(batch, seeds, images):
                tasks.append(asyncio.create_task(one(prompt, k, seed, img)))
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
            if failed:  # fail fast: a judge outage past its retry budget stops the shard now
                raise failed[0].exception()
            tasks = [t for t in tasks if not t.done()]
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
    return timing


def make_judge_fn(ctx: StageContext, transport: Any):
    """Bind the judging pipeline to this experiment: (png, prompt, k, seed, key, sha, size, think text) ->
    RewardRecord (the think text, the plan the image was generated from, is kept in the record)."""
    from ..judging.pipeline import judge_candidate

    async def judge_fn(png: bytes, prompt: Prompt, k: int, seed: int, ikey: str, sha: str, size,
                       think_text=None) -> RewardRecord:
        return await judge_candidate(transport, png, prompt, candidate_index=k, seed=seed, image_key=ikey,
                                     image_sha256=sha, width=size[0], height=size[1],
                                     judge=ctx.exp.judge, reward=ctx.exp.reward, think_text=think_text)
    return judge_fn


def run(exp: Experiment, round: int, shard: int = 0, num_shards: int = 1, *, transport: Any = None,
        progress: bool = True) -> Dict[str, Any]:
    ctx = StageContext.create(exp, round)
    if ctx.layout.shard_done("generate", shard):
        ctx.say(f"generate shard {shard}/{num_shards}: already complete")
        return ctx.layout.marker("generate", shard) or {}
    prompts = shard_prompts(round_prompts(ctx), shard, num_shards)
    K = exp.generation.candidates_per_prompt
    items = [(p, k) for p in prompts for k in range(K)]
    done = set(ctx.store.list(ctx.layout.shard_prefix("judgments", shard) + "items/"))
    todo = [(p, k) for p, k in items if item_key(ctx, shard, p, k) not in done]
    ctx.say(f"generate shard {shard}/{num_shards}: {len(prompts)} prompts x {K} = {len(items)} candidates, "
            f"{len(items) - len(todo)} already done")
    t0 = time.perf_counter()
    timing: Dict[str, float] = {}
    if todo:
        model = load_round_model(ctx)

        async def go(bar) -> Dict[str, float]:
            if transport is not None:  # injected (tests, in-process benches)
                return await _generate_and_judge(ctx, shard, todo, model, make_judge_fn(ctx, transport), bar)
            from ..judging.client import TritonTransport

            # gRPC channels belong to the event loop they were made in: open the transport inside it
            async with TritonTransport.from_config(exp.judge, experiment=exp.name, store=ctx.store,
                                                   cache_key=ctx.layout.cache_key) as remote:
                return await _generate_and_judge(ctx, shard, todo, model, make_judge_fn(ctx, remote), bar)

        with progress_bar(total=len(items), initial=len(items) - len(todo), desc=f"generate+judge shard {shard}",
                          unit="img", enabled=progress) as bar:
            timing = asyncio.run(go(bar))
    # consolidate: every item must be there exactly once, in prompt order
    records: List[RewardRecord] = []
    for p, k in items:
        key = item_key(ctx, shard, p, k)
        records.append(parse_record(ctx.store.get_text(key), RewardRecord, source=ctx.store.uri_for(key)))
    ctx.store.put_jsonl(records_key(ctx, shard), records, checksum=True)
    summary = {"records": len(records), "prompts": len(prompts),
               "global_unparsed": sum(not r.global_judgment.parsed for r in records),
               "regions_unparsed": sum(not r.regions_parsed for r in records),
               "wall_s": _secs(time.perf_counter() - t0), **{k: _secs(v) for k, v in timing.items()}}
    ctx.layout.mark_done("generate", shard, **summary)
    ctx.say(f"generate shard {shard}: done: {json.dumps(summary)}")
    return summary
