"""SAM boxer cost on this machine: seconds per 1024x1024 image for the tiny random SAM used in tests and
for a randomly initialised ViT-B SAM (the released vit_b architecture), side by side in one process,
through the real `sam` boxer backend (segment-anything's automatic mask generator).

    python benchmarks/bench_sam.py [--size 1024] [--points 16] [--repeat 2] [--threads N] [--batch 4] [--skip-vit-b]

Each model is timed one image at a time and with its image encoder batched (`propose`, issue 15), side by
side on the same images, every round reported.

Random weights: the timing is the model's compute (image encoder + prompt-grid decoding), which does not
depend on the weights' values; SAM's default quality thresholds drop nearly every random mask, so the
mask post-processing of a trained model (run-length encoding of the kept masks) is not included and a
trained model's time per image is somewhat higher. Prints one line per model and the vit_b / tiny ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from srum_jobs.judging.protocols import BoxOptions  # noqa: E402
from srum_jobs.models.sam_boxer import RELEASED, TINY, SamBoxer, save_random_sam  # noqa: E402


def scene(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 235, np.uint8)
    for _ in range(6):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 10, size // 3, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    return img


def time_model(model_type: str, dims, ckpt: Path, images: list, points: int, repeat: int) -> dict:
    """Seconds per image, every round: one image at a time (propose_one) and the batch (propose, whose image
    encoder runs on the whole batch), alternating, on the same images."""
    params = {"model_type": model_type, "model_path": str(ckpt), "device": "cpu",
              "encoder_batch": str(len(images))}
    if model_type == "custom":
        params.update({k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
                       for k, v in dataclasses.asdict(dims).items()})
    boxer = SamBoxer(params)
    opts = BoxOptions(points_per_side=points, max_regions=16)
    boxer.propose(images[:1], opts)   # warm-up (allocator, oneDNN kernel choice)
    out = {"one_at_a_time": [], "batched": []}
    for _ in range(repeat):
        t0 = time.perf_counter()
        for im in images:
            boxer.propose_one(im, opts)
        out["one_at_a_time"].append((time.perf_counter() - t0) / len(images))
        t0 = time.perf_counter()
        boxer.propose(images, opts)
        out["batched"].append((time.perf_counter() - t0) / len(images))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--points", type=int, default=16, help="points_per_side (BoxOptions default 16)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--skip-vit-b", action="store_true", help="time only the tiny model")
    ap.add_argument("--batch", type=int, default=4, help="images per batch (distinct scenes)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    images = [scene(args.size, i) for i in range(args.batch)]
    print(f"# SAM boxer, {args.size}x{args.size} image, points_per_side {args.points}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("tiny", "custom", TINY)] + ([] if args.skip_vit_b else [("vit_b", "vit_b", RELEASED["vit_b"])])
        for label, model_type, dims in runs:
            ckpt = save_random_sam(Path(tmp) / f"{label}.pth", dims, seed=0)
            times = time_model(model_type, dims, ckpt, images, args.points, args.repeat)
            results[label] = statistics.median(times["one_at_a_time"])
            for mode in ("one_at_a_time", "batched"):
                t = times[mode]
                print(f"{label:6s} {mode:13s} encoder {dims.encoder_embed_dim}x{dims.encoder_depth} @ "
                      f"{dims.image_size}px: {statistics.median(t):.3f} s/image (median of {len(t)}, min "
                      f"{min(t):.3f}, max {max(t):.3f}: {', '.join(f'{x:.3f}' for x in t)})")
            ratios = [a / b for a, b in zip(times["one_at_a_time"], times["batched"])]
            print(f"{label:6s} batch of {len(images)} vs one at a time: {statistics.median(ratios):.2f}x faster "
                  f"per image (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    if "vit_b" in results:
        print(f"ratio vit_b / tiny: {results['vit_b'] / results['tiny']:.1f}x")


if __name__ == "__main__":
    main()
