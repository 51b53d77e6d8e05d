"""Soak: 2,000 judgments through the real local Triton server with 64 requests in flight, the server
restarted twice while they run. Every request must be answered exactly once, with exactly the answer the
same judge gives in-process for that image and instruction: nothing lost, duplicated or crossed."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest

from srum_jobs.judging.client import TritonTransport
from srum_jobs.judging.protocols import JudgeParams

pytestmark = [pytest.mark.triton, pytest.mark.slow]

N_IMAGES, N_PROMPTS = 20, 100  # 2,000 distinct (image, instruction) pairs


def _png(seed: int) -> bytes:
    from srum_jobs.toy.world import render_prompt, to_pil, toy_prompts

    val = toy_prompts("val")
    img = to_pil(render_prompt(val[seed * 7 % len(val)].text, np.random.default_rng(seed)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_two_thousand_judgments_survive_server_restarts(triton_server):
    from srum_jobs.judging.templates import load_templates
    from srum_jobs.toy.judge_backend import ToyJudgeBackend
    from srum_jobs.toy.world import toy_prompts

    tpl = load_templates()
    prompts = [p.text for p in toy_prompts("val")[:N_PROMPTS]]
    images = [_png(i) for i in range(N_IMAGES)]
    pairs = [(i, j) for i in range(N_IMAGES) for j in range(N_PROMPTS)]
    instructions = [tpl.render_global(prompts[j], 32, 32) for _, j in pairs]
    params = JudgeParams(max_new_tokens=128)

    # the expected answers: the same backend in-process
    from PIL import Image

    backend = ToyJudgeBackend({"preset": "test"})
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    expected = []
    for k in range(0, len(pairs), 200):
        chunk = pairs[k:k + 200]
        expected += [r.text for r in backend.generate([decoded[i] for i, _ in chunk], instructions[k:k + 200], params)]

    restarts = []
    done = [0]

    async def go():
        async with TritonTransport(triton_server.grpc_url, max_in_flight=64, retries=40, timeout_s=30,
                                   max_backoff_s=2.0, experiment="soak") as t:
            async def one(n: int, i: int):
                r = await t.judge(images[i], instructions[n], params)
                done[0] += 1
                return r

            async def restarter():
                # restart while requests are in flight: after 20% and after 60% of the answers
                for mark in (400, 1200):
                    while done[0] < mark:
                        await asyncio.sleep(0.005)
                    await asyncio.to_thread(triton_server.restart)
                    restarts.append(done[0])

            t0 = time.perf_counter()
            rs = asyncio.create_task(restarter())
            replies = await asyncio.gather(*[one(n, i) for n, (i, _) in enumerate(pairs)])
            await rs
            return replies, time.perf_counter() - t0, t.stats

    replies, wall, stats = asyncio.run(go())
    assert len(restarts) == 2 and all(r < 2000 for r in restarts), "no restart while judgments were in flight"
    assert len(replies) == len(pairs) == 2000
    lost_or_crossed = [n for n, (r, e) in enumerate(zip(replies, expected)) if r.text != e]
    assert not lost_or_crossed, f"{len(lost_or_crossed)} replies differ from the in-process judge"
    print(f"\nsoak: 2000 judgments, 64 in flight, 2 restarts: {wall:.1f} s, {2000 / wall:.0f} judgments/s, "
          f"gRPC attempts={stats.sent}, retries={stats.retries}")
