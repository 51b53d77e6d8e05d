"""Stage 1, generate: K candidates per prompt of one shard, boxed and judged by the judge server.

Generation (the model, on this process's device) and judging (the Triton server, over gRPC) overlap:
a generator thread fills a small queue with finished batches while the event loop sends the previous
ones to the judge. Each finished candidate is written as its own object (image, then record), so a
killed pod resumes where it stopped and a rerun of a finished shard does nothing.

The per-candidate records are the source of truth; `records.jsonl` is their consolidation. A rerun of a
finished shard checks it, and a damaged one is moved to quarantine and rebuilt from them (a damaged
candidate record is quarantined and that candidate generated and judged again, to the same result).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Dict, List, Sequence

from ..config import Experiment
from ..records import Prompt, RecordError, RewardRecord
from ..storage import png_bytes, sha256_hex
from .candidates import Item, quarantine_records, read_items, records_damage, shard_items
from .common import StageContext, candidate_seed, load_round_model
from .progress import progress_bar, seconds

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

    def hand_over(item: Any) -> bool:
        """Give the event loop a batch (or the end, or an error); False when the stage is stopping
        (Ctrl-C, SIGTERM) and its loop is gone: nobody waits for it then, and that is not an error."""
        if stop.is_set() or loop.is_closed():
            return False
        put = ready.put(item)
        try:
            fut = asyncio.run_coroutine_threadsafe(put, loop)
        except RuntimeError:          # the loop closed between the check and the call
            put.close()
            return False
        fut.result()
        return True

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
                if not hand_over((batch, seeds, images)):
                    return
        except BaseException as e:  # surface generator errors in the event loop instead of hanging it
            hand_over(e)
            return
        hand_over(None)

    thread = threading.Thread(target=producer, name="srum-generate", daemon=True)
    thread.start()
    in_flight = asyncio.Semaphore(ctx.exp.judge.max_in_flight)
    tasks: List[asyncio.Task] = []

    async def one(prompt: Prompt, k: int, seed: int, generated: Any) -> None:
        async with in_flight:
            png = png_bytes(generated.image)
            ikey = ctx.layout.candidate_image_key(shard, prompt.index, k)
            await asyncio.to_thread(ctx.store.put_bytes, ikey, png)
            record = await judge_fn(png, prompt, k, seed, ikey, sha256_hex(png), generated.image.size,
                                    generated.think_text)
            # the record is written last: its presence means the candidate is completely done
            await asyncio.to_thread(ctx.store.put_text, ctx.layout.candidate_record_key(shard, prompt.index, k),
                                    record.to_json_line())
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


def judge_transport(exp: Experiment, store: Any = None, cache_key: Any = None) -> Any:
    """The judge server's transport (Triton gRPC, boxer included), an async context manager. Tests and
    in-process benches replace this function to judge without a server."""
    from ..judging.client import TritonTransport

    return TritonTransport.from_config(exp.judge, experiment=exp.name, store=store, cache_key=cache_key)


def run(exp: Experiment, round: int, shard: int = 0, num_shards: int = 1, *, progress: bool = True) -> Dict[str, Any]:
    ctx = StageContext.create(exp, round)
    if ctx.layout.shard_done("generate", shard):
        damage = records_damage(ctx, shard)
        if damage is None:
            ctx.say(f"generate shard {shard}/{num_shards}: already complete")
            return ctx.layout.marker("generate", shard) or {}
        where = quarantine_records(ctx, shard, damage)
        ctx.say(f"generate shard {shard}: records.jsonl is damaged ({damage}); moved to {where}; redoing the shard "
                "from its candidate records")
    prompts, items = shard_items(ctx, shard, num_shards)
    K = exp.generation.candidates_per_prompt
    t0 = time.perf_counter()
    timing: Dict[str, float] = {}
    model = None
    for attempt in (1, 2):     # the second pass redoes candidates whose stored record was found damaged
        done = set(ctx.store.list(ctx.layout.candidate_records_prefix(shard)))
        todo = [(p, k) for p, k in items if ctx.layout.candidate_record_key(shard, p.index, k) not in done]
        if attempt == 1:
            ctx.say(f"generate shard {shard}/{num_shards}: {len(prompts)} prompts x {K} = {len(items)} candidates, "
                    f"{len(items) - len(todo)} already done")
        if todo:
            model = model or load_round_model(ctx)
            timing = _generate_shard(ctx, exp, shard, todo, items, model, progress)
        records, bad = read_items(ctx, shard, items)
        if not bad:
            break
        for key, what in bad.items():
            if what != "missing":
                ctx.say(f"generate shard {shard}: candidate record damaged ({what}); moved to "
                        f"{ctx.layout.quarantine(key, what)}; generating it again")
    else:
        raise RecordError(f"generate shard {shard}: {len(bad)} candidate record(s) are still missing or damaged after "
                          f"a second pass (e.g. {next(iter(bad.values()))})")
    ctx.store.put_jsonl(ctx.layout.records_key(shard), records, checksum=True)
    summary = {"records": len(records), "prompts": len(prompts),
               "global_unparsed": sum(not r.global_judgment.parsed for r in records),
               "regions_unparsed": sum(not r.regions_parsed for r in records),
               "wall_s": seconds(time.perf_counter() - t0), **{k: seconds(v) for k, v in timing.items()}}
    ctx.layout.mark_done("generate", shard, **summary)
    ctx.say(f"generate shard {shard}: done: {json.dumps(summary)}")
    return summary


def _generate_shard(ctx: StageContext, exp: Experiment, shard: int, todo: List[Item], items: List[Item], model: Any,
                    progress: bool) -> Dict[str, float]:
    """Generate and judge the `todo` candidates of a shard, with a progress bar over all of its `items`."""
    async def go(bar) -> Dict[str, float]:
        # gRPC channels belong to the event loop they were made in: open the transport inside it
        async with judge_transport(exp, ctx.store, ctx.layout.cache_key) as transport:
            return await _generate_and_judge(ctx, shard, todo, model, make_judge_fn(ctx, transport), bar)

    with progress_bar(total=len(items), initial=len(items) - len(todo), desc=f"generate+judge shard {shard}",
                      unit="img", enabled=progress) as bar:
        return asyncio.run(go(bar))
