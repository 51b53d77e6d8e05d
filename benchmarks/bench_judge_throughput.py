"""Does batching pay? The same judge backend behind one local Triton server twice, side by side in one run:

  batched      `srum_judge`: Triton's dynamic batcher may merge up to --max-batch requests into one backend call
  one-at-a-time `srum_evaluator`: max_batch_size 1 and no dynamic batcher, every request its own backend call

Both get the same N in-grammar toy judgments (benchmarks/judge_inputs.py: real prompts, real answers) with
--in-flight requests outstanding, from the project's own gRPC client. Each round runs both, in alternating
order; every round is reported, then the median and the spread (min-max) of throughputs and of the per-round
ratio batched / one-at-a-time. Replies of the two models are compared request by request.

The default backend is `hf`: a tiny randomly initialised Qwen2.5-VL (built locally, never downloaded) through
the real transformers generate path, whose per-call cost batching can amortise. `--backend toy` measures the
toy judge instead. Both models run two instances, as production does (with one, Triton's batcher stalls:
issue 15 and benchmarks/bench_judge_batching.py).

    python benchmarks/bench_judge_throughput.py                         # hf, 32 requests, 32 in flight
    python benchmarks/bench_judge_throughput.py --max-new-tokens 32     # where prefill dominates
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from judge_inputs import toy_judge_requests  # noqa: E402


def spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("hf", "toy"), default="hf")
    ap.add_argument("--requests", type=int, default=32, help="judgments per measurement")
    ap.add_argument("--in-flight", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=32, help="largest batch of the batched model")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="the judge's default (judge.max_new_tokens)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model instance")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)

    from srum_jobs.judging.client import TritonTransport
    from srum_jobs.judging.protocols import JudgeParams
    from srum_jobs.judging.server import LocalTritonServer, ModelSpec

    tmp = tempfile.TemporaryDirectory(prefix="srum-bench-")
    if args.backend == "hf":
        from srum_jobs.models.hf_judge import save_random_qwen2_5_vl

        model = save_random_qwen2_5_vl(Path(tmp.name) / "qwen", seed=0)
        params = {"model_path": str(model), "device": "cpu", "max_batch_size": str(args.max_batch)}
        env = {"OMP_NUM_THREADS": str(args.threads)}
    else:
        params = {"preset": "test", "threads": str(args.threads)}
        env = {}
    batched = ModelSpec(args.backend, {**params, "backend_max_batch": str(args.max_batch)}, instances=2,
                        max_batch_size=args.max_batch, max_queue_delay_us=0, preferred_batch_sizes=[])
    # no dynamic batcher at all for the baseline: each request goes straight to a free instance
    single = ModelSpec(args.backend, {**params, "backend_max_batch": "1"}, instances=2, max_batch_size=1,
                       dynamic_batching=False)
    gen = JudgeParams(max_new_tokens=args.max_new_tokens)
    warmup = toy_judge_requests(4, seed=99)
    sets = [toy_judge_requests(args.requests, seed=100 + r) for r in range(args.rounds)]

    async def run_round(url: str, model: str, inputs) -> Dict:
        async with TritonTransport(url, judge_model=model, boxer_model=None, max_in_flight=args.in_flight,
                                   timeout_s=600) as t:
            before = await t.statistics(model)
            t0 = time.perf_counter()
            replies = await asyncio.gather(*[t.judge(png, text, gen) for png, text in inputs])
            wall = time.perf_counter() - t0
            after = await t.statistics(model)

        def execs(stats):
            return int(stats["model_stats"][0].get("execution_count", 0))

        return {"per_s": len(inputs) / wall, "wall_s": wall, "replies": replies,
                "backend_calls": execs(after) - execs(before)}

    async def measure(url: str) -> List[Dict]:
        for model in ("srum_judge", "srum_evaluator"):
            await run_round(url, model, warmup)                        # not timed: load, first-call costs
        rounds = []
        for r, inputs in enumerate(sets):
            order = ("srum_judge", "srum_evaluator") if r % 2 == 0 else ("srum_evaluator", "srum_judge")
            res = {m: await run_round(url, m, inputs) for m in order}
            rounds.append(res)
            b, s = res["srum_judge"], res["srum_evaluator"]
            same = sum(x == y for x, y in zip(b["replies"], s["replies"]))
            print(f"round {r + 1}: batched {b['per_s']:7.2f} judgments/s ({b['backend_calls']} backend calls)   "
                  f"one-at-a-time {s['per_s']:7.2f}/s ({s['backend_calls']} calls)   ratio {b['per_s'] / s['per_s']:.2f}x"
                  f"   same replies {same}/{len(inputs)}", flush=True)
        return rounds

    with LocalTritonServer({"srum_judge": batched, "srum_evaluator": single}, env=env,
                           run_dir=Path(tmp.name) / "server") as server:
        rounds = asyncio.run(measure(server.grpc_url))
    tmp.cleanup()

    b = [r["srum_judge"]["per_s"] for r in rounds]
    s = [r["srum_evaluator"]["per_s"] for r in rounds]
    ratios = [x / y for x, y in zip(b, s)]
    figures = {
        "backend": args.backend, "requests": args.requests, "in_flight": args.in_flight, "max_batch": args.max_batch,
        "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "threads": args.threads,
        "batched_per_s": b, "one_at_a_time_per_s": s, "ratio_per_round": ratios,
        "batched": spread(b), "one_at_a_time": spread(s), "ratio": spread(ratios),
        "backend_calls_batched": [r["srum_judge"]["backend_calls"] for r in rounds],
        "same_replies": sum(x == y for r in rounds for x, y in zip(r["srum_judge"]["replies"],
                                                                   r["srum_evaluator"]["replies"])),
        "replies": sum(len(r["srum_judge"]["replies"]) for r in rounds),
        "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()[0],
    }
    print(f"{args.backend} judge, {args.requests} judgments, {args.in_flight} in flight, max_new_tokens "
          f"{args.max_new_tokens}, {args.rounds} rounds, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"  batched        median {figures['batched']['median']:7.2f}/s  (min {min(b):.2f}, max {max(b):.2f})")
    print(f"  one-at-a-time  median {figures['one_at_a_time']['median']:7.2f}/s  (min {min(s):.2f}, max {max(s):.2f})")
    print(f"  ratio          median {figures['ratio']['median']:7.2f}x  (min {min(ratios):.2f}, max {max(ratios):.2f})")
    print(f"  same replies   {figures['same_replies']}/{figures['replies']}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
