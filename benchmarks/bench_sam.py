"""SAM boxer cost on this machine: seconds per 1024x1024 image for the tiny random SAM used in tests and
for a randomly initialised ViT-B SAM (the released vit_b architecture), side by side in one process,
through the real `sam` boxer backend (segment-anything's automatic mask generator).

    python benchmarks/bench_sam.py [--size 1024] [--points 16] [--repeat 2] [--threads N] [--skip-vit-b]

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


def time_model(model_type: str, dims, ckpt: Path, image: np.ndarray, points: int, repeat: int) -> list:
    params = {"model_type": model_type, "model_path": str(ckpt), "device": "cpu"}
    if model_type == "custom":
        params.update({k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
                       for k, v in dataclasses.asdict(dims).items()})
    boxer = SamBoxer(params)
    opts = BoxOptions(points_per_side=points, max_regions=16)
    boxer.propose([image], opts)   # warm-up (allocator, oneDNN kernel choice)
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        boxer.propose([image], opts)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--points", type=int, default=16, help="points_per_side (BoxOptions default 16)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--skip-vit-b", action="store_true", help="time only the tiny model")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    image = scene(args.size, 0)
    print(f"# SAM boxer, {args.size}x{args.size} image, points_per_side {args.points}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("tiny", "custom", TINY)] + ([] if args.skip_vit_b else [("vit_b", "vit_b", RELEASED["vit_b"])])
        for label, model_type, dims in runs:
            ckpt = save_random_sam(Path(tmp) / f"{label}.pth", dims, seed=0)
            times = time_model(model_type, dims, ckpt, image, args.points, args.repeat)
            results[label] = statistics.median(times)
            print(f"{label:6s} encoder {dims.encoder_embed_dim}x{dims.encoder_depth} @ {dims.image_size}px: "
                  f"{results[label]:.3f} s/image (median of {len(times)}: {', '.join(f'{t:.3f}' for t in times)})")
    if "vit_b" in results:
        print(f"ratio vit_b / tiny: {results['vit_b'] / results['tiny']:.1f}x")


if __name__ == "__main__":
    main()
