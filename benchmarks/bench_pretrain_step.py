"""One step of the toy generator's pretraining (the demo recipe's U-Net, batch 64, plans, AdamW, clip, EMA):
channels-last memory format (what `toy/pretrain.py` uses) against the default contiguous format, side by
side in one process on the same batches and the same initial weights.

    python benchmarks/bench_pretrain_step.py [--rounds 5] [--steps 8] [--threads 2] [--preset demo]

Each round trains a fresh copy of the same network for --steps steps in each format (the order alternates
between rounds) and records the median step time after the first (warm-up) step. Before timing, one step
from the same weights on the same batch is checked to give the same loss in both formats (the arithmetic
is the same; only the summation order differs). Prints every round and the median and spread of the ratio
channels-last / contiguous (below 1 = faster).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from srum_jobs.toy import pretrain as P


def make_batches(cfg: dict, n: int, seed: int) -> list:
    """Pretraining batches drawn exactly as train_generator draws them (prompt and plan dropout included)."""
    rng = np.random.default_rng([seed, 2])
    gen = torch.Generator().manual_seed(seed)
    return [P.generator_step_inputs(cfg, rng, gen) for _ in range(n)]


def train_steps(base, batches, cfg: dict, channels_last: bool) -> tuple:
    """Trains a copy of `base` on `batches` with pretraining's own step (plus its EMA update); returns
    (step times in s, first loss)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = copy.deepcopy(base).to(memory_format=fmt)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(float(cfg["ema"])))
    opt = P.generator_optimizer(net, float(cfg["lr"]))
    times, first = [], None
    for x0, prompts, layout, t, eps in batches:
        t0 = time.perf_counter()
        loss = P.flow_matching_step(net, opt, x0, prompts, layout, t, eps, memory_format=fmt)
        ema.update_parameters(net)
        times.append(time.perf_counter() - t0)
        if first is None:
            first = loss.item()
    return times, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo", choices=sorted(P.PRESETS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="steps per format per round (the first is warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the rounds here")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step of each run is warm-up)")

    torch.set_num_threads(args.threads)
    cfg = P.preset_config(args.preset)["generator"]
    torch.manual_seed(args.seed)
    base = P.build_generator(cfg)
    batches = make_batches(cfg, args.steps, args.seed)

    # correctness first: one step from the same weights on the same batch, both formats
    _, loss_c = train_steps(base, batches[:1], cfg, channels_last=False)
    _, loss_n = train_steps(base, batches[:1], cfg, channels_last=True)
    if not np.isclose(loss_c, loss_n, rtol=1e-5, atol=1e-6):
        raise SystemExit(f"losses differ: contiguous {loss_c!r} vs channels-last {loss_n!r}")
    print(f"preset {args.preset}, batch {cfg['batch']}, threads {args.threads}, {args.steps} steps per run; "
          f"first-step loss {loss_c:.6f} (contiguous) vs {loss_n:.6f} (channels-last)")

    rows = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        med = {}
        for cl in order:
            times, _ = train_steps(base, batches, cfg, channels_last=cl)
            med["channels_last" if cl else "contiguous"] = statistics.median(times[1:])
        ratio = med["channels_last"] / med["contiguous"]
        rows.append({**med, "ratio": ratio})
        print(f"round {r + 1}: contiguous {med['contiguous']:.3f} s/step, channels-last "
              f"{med['channels_last']:.3f} s/step, ratio {ratio:.3f}")
    ratios = [row["ratio"] for row in rows]
    print(f"ratio channels-last / contiguous over {len(rows)} rounds: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"preset": args.preset, "threads": args.threads, "steps": args.steps, "rounds": rows,
                       "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                       "ratio_max": max(ratios)}, fh, indent=1)


if __name__ == "__main__":
    main()
