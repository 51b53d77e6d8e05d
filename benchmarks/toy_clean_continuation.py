"""How much clean data does it take to move a toy base's plain mode? A diagnostic, not a method.

Continues the base generator's own pretraining step (toy/pretrain.py: ground-truth renders, prompt and plan
dropout, AdamW, clip 1.0) on *correctly captioned* renders of one split's compositions, and measures plain
-mode accuracy on the validation split before and at checkpoints (paired bootstrap 95% interval vs the base,
in points, over the same prompts and noise). On the `demo-noisy` base it tells whether the self-rewarding
round is limited by the quality of its data or by its amount: a round trains 196 steps of batch 32 (6,272
samples); this loop can stream as many perfect samples as asked.

    python benchmarks/toy_clean_continuation.py --preset demo-noisy --compositions train --steps 600 \
        --json benchmarks/results/toy_val/noisy_clean_continuation_train.json

Validation split only (choosing settings); never the eval split.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from srum_jobs.toy import bench as B
from srum_jobs.toy import pretrain as P


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo-noisy", choices=sorted(B.ROUNDS))
    ap.add_argument("--compositions", default="train", choices=["pretrain", "train"],
                    help="whose compositions the clean renders show: pretraining's, or the round's train split")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=600, help="steps of the pretraining batch size (64 for demo)")
    ap.add_argument("--checkpoints", type=int, default=2, help="evaluations, evenly spaced over the steps")
    ap.add_argument("--eval-samples", type=int, default=2, help="images per validation prompt")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    for name in ("steps", "checkpoints", "eval_samples"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)

    cfg = replace(B.ROUNDS[args.preset], eval_samples=args.eval_samples, diagnostics=False)
    bench = B.Bench(args.preset, cfg, eval_split="val")
    gcfg = P.preset_config(args.preset)["generator"]
    gcfg["caption_noise"] = 0.0          # every caption true: the data a perfect self-rewarding round would have

    def evaluate(tag: str, evals: dict) -> None:
        bench.model.generator.eval()
        evals[tag] = [bench.evaluate(0)]
        row = B.summarise({"base": evals["base"], tag: evals[tag]}, resamples=2000)[tag]
        print(f"{tag:>12}  plain {row['overall']:.4f}  vs base {row.get('overall_ci')}", flush=True)

    evals: dict = {}
    evaluate("base", evals)
    net = bench.model.generator
    opt = P.generator_optimizer(net, args.lr)
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    every = max(1, args.steps // args.checkpoints)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        net.train()
        x0, prompts, layout, t, eps = P.generator_step_inputs(gcfg, rng, gen, split=args.compositions)
        P.flow_matching_step(net, opt, x0, prompts, layout, t, eps)
        if step % every == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  {time.perf_counter() - t0:.0f}s", flush=True)
            evaluate(f"step_{step}", evals)
    if args.json:
        out = {"args": vars(args), "samples_per_step": int(gcfg["batch"]),
               "rows": B.summarise(evals, resamples=10000)}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
