"""Bias diagnostics of a toy generator, next to its accuracy: what a tilted flow-matching target does to
images (larger objects, extra copies, fused blobs, colour everywhere at high noise).

  object_pixels   share of pixels the evaluator's colour segmentation reads as an object colour
  extra_objects   recognisable objects per image beyond the prompt's multiset
  blobs           unrecognisable coloured regions (no shape fits) per image
  x0_mass_t1      colour mass of the model's x0 prediction from pure noise (t = 1): the mean over pixels
                  of min(1, |x0_hat - white| / 2), x0_hat = eps - v(eps, t=1) with guidance; near t = 1
                  x_t says nothing about where objects go, so this is the image the model expects on
                  average, and a target tilted toward object colour raises it.
Ground-truth renders of the same prompts give the reference values (`reference_diagnostics`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Sequence

import numpy as np

from . import world
from .evaluator import find_objects, segment_colors


def image_diagnostics(images: Sequence[Any], prompts: Sequence[str]) -> Dict[str, float]:
    """Mean object-pixel share, extra objects and blobs per image."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    share, extra, blobs = [], [], []
    for img, p in zip(images, prompts):
        arr = world.to_array(img)
        share.append(float((segment_colors(arr) > 0).mean()))
        found = find_objects(arr)
        blobs.append(sum(f.shape is None for f in found))
        got = Counter(f.obj for f in found if f.shape is not None)
        extra.append(sum((got - Counter(world.parse_prompt(p).objects)).values()))
    return {"object_pixels": float(np.mean(share)), "extra_objects": float(np.mean(extra)),
            "blobs": float(np.mean(blobs))}


def x0_mass_t1(model: Any, prompts: Sequence[str], seeds: Sequence[int], *, guidance: float = 2.0,
               think: bool = False) -> float:
    """Colour mass of the guided x0 prediction at t = 1 (see the module docstring)."""
    import torch

    out = []
    for i in range(0, len(prompts), model.batch_size):
        ps, ss = list(prompts[i:i + model.batch_size]), list(seeds[i:i + model.batch_size])
        plans = model.think_texts(ps, ss) if think else None
        eps = model._noise(ss)
        x0 = eps - model.velocity(eps, 1.0, ps, plans, guidance)      # one Euler step from t = 1 to 0
        out.append((x0 - 1.0).norm(dim=1).div(2.0).clamp(max=1.0).mean(dim=(1, 2)))
    return float(torch.cat(out).mean())


def reference_diagnostics(prompts: Sequence[str], seed: int = 0) -> Dict[str, float]:
    """The same image diagnostics on one ground-truth render per prompt, and the mean colour mass of the
    renders (what an unbiased x0 prediction at t = 1 averages to)."""
    rng = np.random.default_rng(seed)
    images = [world.render_prompt(p, rng) for p in prompts]
    out = image_diagnostics(images, prompts)
    x = np.stack(images).astype(np.float32) / 127.5 - 1.0
    out["x0_mass_t1"] = float(np.minimum(1.0, np.linalg.norm(x - 1.0, axis=-1) / 2.0).mean())
    return out
