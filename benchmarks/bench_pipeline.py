"""Pipeline benchmarks, side by side in one process (issue 6):

1. overlap efficiency of the generate stage: wall time of the overlapped generate+judge loop divided by the
   larger of generation-only and judging-only time for the same items (1.0 = perfect overlap);
2. training samples per second with 1 and 2 torchrun processes (gloo, CPU) on the same records;
3. wall time per phase of one `srum run --preset test`-sized round.

Real parts: a real local tritonserver (toy judge + components boxer), the toy model, file:// storage.
Usage: python benchmarks/bench_pipeline.py [--items 64] [--preset test|demo] [--threads 1] [--skip-train]

--threads sets torch's CPU threads of the generator and of the judge server's backend each (default 1:
on a 2-core machine one core per side, as generation and judging have their own GPUs on a cluster;
letting both take every core oversubscribes the CPU and measures the contention, not the overlap).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=64, help="candidates in the overlap measurement")
    ap.add_argument("--preset", default="test")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the generator and of the judge each")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    from srum_jobs.config import parse_experiment
    from srum_jobs.judging.client import TritonTransport
    from srum_jobs.local.judge_server import LocalTritonServer, local_models
    from srum_jobs.local.executor import default_experiment, run_local
    from srum_jobs.models.base import load_model
    from srum_jobs.stages import generate as gen_stage
    from srum_jobs.stages.common import StageContext, candidate_seed, round_prompts
    from srum_jobs.stages.progress import progress_bar
    from srum_jobs.storage import png_bytes

    tmp = Path(tempfile.mkdtemp(prefix="srum-bench-"))
    data = default_experiment(args.preset, f"file://{tmp}/runs")
    data["prompts"]["limit"] = max(1, args.items // data["generation"]["candidates_per_prompt"])
    data["prompts"]["num_shards"] = 1
    data["judge"]["cache"] = False  # measure the judge, not the cache
    results = {"preset": args.preset, "threads_per_side": args.threads}
    judge_params = {"preset": args.preset, "threads": str(args.threads)}
    with LocalTritonServer(local_models("toy", judge_params, "components"), run_dir=tmp / "triton") as server:
        data["judge"]["url"] = server.grpc_url
        exp = parse_experiment(data)
        ctx = StageContext.create(exp, 1)
        prompts = round_prompts(ctx)
        K = exp.generation.candidates_per_prompt
        items = [(p, k) for p in prompts for k in range(K)]
        model = load_model("toy", {**exp.model.params, "threads": args.threads})
        g = exp.generation

        # warm-up (untimed): the first batch pays for lazy initialisation, which would favour whichever
        # measurement runs second
        warm = items[:g.batch_size]
        model.generate([p.text for p, _ in warm], [candidate_seed(g.seed, 1, p.index, k) for p, k in warm],
                       steps=g.steps, guidance=g.guidance, resolution=g.resolution)

        # (a) generation only
        t0 = time.perf_counter()
        generated = []
        for i in range(0, len(items), g.batch_size):
            batch = items[i:i + g.batch_size]
            seeds = [candidate_seed(g.seed, 1, p.index, k) for p, k in batch]
            generated += model.generate([p.text for p, _ in batch], seeds, steps=g.steps, guidance=g.guidance,
                                        resolution=g.resolution)
        gen_s = time.perf_counter() - t0

        # (b) judging only, the same images
        async def judge_all() -> float:
            async with TritonTransport.from_config(exp.judge, experiment=exp.name) as t:
                fn = gen_stage.make_judge_fn(ctx, t)
                t1 = time.perf_counter()
                pngs = [png_bytes(x.image) for x in generated]
                sem = asyncio.Semaphore(exp.judge.max_in_flight)

                async def one(png, p, k):
                    async with sem:
                        await fn(png, p, k, 0, "bench/x.png", "0" * 64, (g.resolution, g.resolution))
                await asyncio.gather(*[one(png, p, k) for png, (p, k) in zip(pngs, items)])
                return time.perf_counter() - t1
        judge_s = asyncio.run(judge_all())

        # (c) overlapped: the stage's own loop
        async def overlapped() -> float:
            async with TritonTransport.from_config(exp.judge, experiment=exp.name) as t:
                t1 = time.perf_counter()
                with progress_bar(len(items), "overlap", enabled=False) as bar:
                    await gen_stage._generate_and_judge(ctx, 0, items, model, gen_stage.make_judge_fn(ctx, t), bar)
                return time.perf_counter() - t1
        both_s = asyncio.run(overlapped())
        results["overlap"] = {"items": len(items), "generate_only_s": round(gen_s, 2), "judge_only_s": round(judge_s, 2),
                              "overlapped_s": round(both_s, 2),
                              "ratio_to_max": round(both_s / max(gen_s, judge_s), 3),
                              "ratio_to_sum": round(both_s / (gen_s + judge_s), 3)}
        print(json.dumps(results["overlap"]), flush=True)

        if not args.skip_train:
            # a full round's data (generate + rewards) once, then the train stage with 1 and 2 processes
            data2 = json.loads(json.dumps(data))
            data2["name"] = "bench-train"
            data2["training"].update(steps=20, save_every=20, batch_size=8)
            run_local(data2, stages=("generate", "rewards"), workdir=tmp / "w", progress=False)
            exp2 = parse_experiment(data2)
            results["train"] = {}
            for nproc in (1, 2):
                d = json.loads(json.dumps(data2))
                d["name"] = f"bench-train-{nproc}"
                # same records: copy the round's generate/rewards outputs under the new experiment name
                src = tmp / "runs" / "bench-train"
                dst = tmp / "runs" / d["name"]
                subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
                for f in (dst / "round-1" / "markers" / "train").glob("*"):
                    f.unlink()
                (dst / "lease.json").unlink(missing_ok=True)
                t1 = time.perf_counter()
                run_local(d, stages=("train",), workdir=tmp / f"w{nproc}", progress=False, nproc=nproc)
                wall = time.perf_counter() - t1
                # the loop's own time (no process start, no model load); samples = global batch x steps
                loop_s = StageContext.create(parse_experiment(d), 1).layout.marker("train", 0)["wall_s"]
                samples = exp2.training.steps * exp2.training.batch_size * nproc
                results["train"][nproc] = {"wall_s": round(wall, 2), "loop_s": loop_s,
                                           "samples_per_s": round(samples / loop_s, 2)}
                print(json.dumps({"nproc": nproc, **results["train"][nproc]}), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
