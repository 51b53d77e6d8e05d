"""The SRUM objective: rectified-flow matching shaped per latent token by the reward map.

    x_t    = (1 - t) x0 + t eps,   target = eps - x0   (the model adapter builds both; see models/base.py)
    err    = (v - target)^2, averaged over channels        -> (B, N)

`weighting: paper` (the paper's loss, reward.weighting):
    reward = mean_tokens(alpha * R * err)
    ref    = mean_tokens(err)                 (reference: sample)  or  mean_tokens((v - v_base)^2)  (base)
    total  = reward + lambda_c * ref

`weighting: debiased` (this project's variant): every token has the same loss weight; the reward moves the
*target* instead, between the sample's flow and the frozen base model's velocity v_base at the same x_t:
    rho    = alpha * R         where R >= 0      (praise: how far to learn from the sample)
           = push_away * R     where R < 0       (a bounded push away from a penalised region)
    reward = mean_tokens((v - (v_base + rho * (target - v_base)))^2)
With the `corrective` map (rewards.py: 1 on background and on every region the judge does not penalise,
the region's negative score where it does) rho is one number per record except in penalised regions.
Why: with content-dependent loss weights w the minimiser is E[w (eps - x0) | x_t] / E[w | x_t], which at
high noise (x_t says little about where objects are) leans toward what the weights favour (object colour
everywhere: larger objects, extra copies, fused blobs). Here the loss weights are uniform and the
minimiser is (1 - E[rho | x_t]) v_base + E[rho | x_t] v_rho, where v_rho is the flow of the samples
reweighted by their (per-record) rho: a blend of two proper flows at every x_t, with nothing divided by a
content-dependent weight. A record the judge fully approves (rho = 1) is plain flow matching; a rejected
one stays close to the base; a penalised region pushes away from that sample by at most the distance
from the base to it (bounded, unlike a negative loss weight, which grows without limit).

With reference: base the lambda_c term adds nothing the debiased target does not already have: for every v,
    |v - (v_base + rho d)|^2 + lambda_c |v - v_base|^2
        = (1 + lambda_c) |v - (v_base + rho / (1 + lambda_c) d)|^2 + (terms without v),   d = target - v_base,
so it only shrinks rho by 1 / (1 + lambda_c) and scales the gradient (which AdamW's update and clipping
mostly ignore): `use_reference=False` is the same objective with a larger rho (tested). What the base does
in this weighting is the anchor inside the target; `anchor="self"` (the ablation) blends toward the
model's own current prediction (no gradient) instead, whose gradient is rho * d(err)/dv: per-token loss
weights again, the tilting kind, with no base anywhere.

`dense_max_t` < 1 applies the dense map only at flow times t <= dense_max_t (where x_t pins down the
sample); above it each record's map is replaced by its mean over tokens.

R is the reward map pooled to the latent grid (rewards.py), alpha the global factor (g + 1) / 2 of the
`signed` and `corrective` modes (1 in `reference` mode, where it is already inside R). With R = 1,
alpha = 1, lambda_c = 0 both weightings are exactly the plain flow-matching MSE. Paper weighting: a token's gradient is proportional to its total weight
alpha * R + lambda_c: zero weight, zero gradient; a negative weight (a strongly penalised region in
`signed` mode) pushes the prediction *away* from that target. Ablation switches: `use_global=False`
drops alpha, `use_reference=False` drops the reference term (still returned, detached, for logging);
the sparse reward is a map mode (rewards.py), not a loss switch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# t stays strictly inside (0, 1): adapters divide by t or 1 - t when they convert between parametrisations
T_EPS = 1e-5
WEIGHTINGS = ("paper", "debiased")
REFERENCES = ("sample", "base")
ANCHORS = ("base", "self")


def needs_base_velocity(weighting: str, anchor: str, reference: str, use_reference: bool, lambda_c: float) -> bool:
    """Does the loss read the frozen base model's velocity: as the debiased target's anchor, or as what a
    (non-zero) reference term anchors to? The trainer runs the base model exactly when this is true."""
    return (weighting == "debiased" and anchor == "base") or (reference == "base" and use_reference and lambda_c > 0)


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t): s > 1 moves mass towards t = 1 (more noise)."""
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_timesteps(batch: int, shift: float, generator: Optional[torch.Generator] = None,
                     device: Optional[torch.device] = None, *, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """(batch,) float32 flow times: logit-normal(mean, std), then shifted. Drawn on the CPU from
    `generator` (so the stream is the same on every device) and moved to `device`."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    u = torch.randn(batch, generator=generator, dtype=torch.float32) * std + mean
    t = shift_timesteps(torch.sigmoid(u), shift).clamp(T_EPS, 1.0 - T_EPS)
    return t.to(device) if device is not None else t


@dataclass
class LossParts:
    total: torch.Tensor             # what backward() is called on
    reward_term: torch.Tensor       # paper: mean(alpha * R * err); debiased: mean((v - shaped target)^2)
    reference_term: torch.Tensor    # mean(err) or mean((v - v_base)^2); in `total` (times lambda_c) only when use_reference


def _masked_mean(x: torch.Tensor, m: Optional[torch.Tensor]) -> torch.Tensor:
    if m is None:
        return x.mean()
    return (x * m).sum() / m.sum().clamp_min(1.0)  # an all-padding batch gives 0, not NaN


def srum_loss(v: torch.Tensor, target: torch.Tensor, reward: torch.Tensor, alpha: torch.Tensor, lambda_c: float,
              token_mask: Optional[torch.Tensor] = None, *, use_global: bool = True,
              use_reference: bool = True, weighting: str = "paper", reference: str = "sample",
              v_ref: Optional[torch.Tensor] = None, push_away: float = 1.0, t: Optional[torch.Tensor] = None,
              dense_max_t: float = 1.0, anchor: str = "base") -> LossParts:
    """v, target, v_ref (B, N, C); reward (B, N); alpha (B,); token_mask (B, N) bool (False = padding);
    t (B,) flow times (needed when dense_max_t < 1). v_ref is the frozen base model's velocity at the same
    x_t (needed by weighting debiased with anchor base, and by reference base)."""
    if v.shape != target.shape or v.dim() != 3:
        raise ValueError(f"v and target must both be (B, N, C); got v {tuple(v.shape)}, target {tuple(target.shape)}")
    b, n, _ = v.shape
    if tuple(reward.shape) != (b, n):
        raise ValueError(f"reward must be (B, N) = ({b}, {n}), got {tuple(reward.shape)}")
    if tuple(alpha.shape) != (b,):
        raise ValueError(f"alpha must be (B,) = ({b},), got {tuple(alpha.shape)}")
    if lambda_c < 0:
        raise ValueError(f"lambda_c must be >= 0, got {lambda_c}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"reward.weighting {weighting!r} is not one of {WEIGHTINGS}")
    if reference not in REFERENCES:
        raise ValueError(f"reward.reference {reference!r} is not one of {REFERENCES}")
    if not 0.0 <= push_away <= 1.0:
        raise ValueError(f"reward.push_away must be in [0, 1], got {push_away}")
    if anchor not in ANCHORS:
        raise ValueError(f"reward.anchor {anchor!r} is not one of {ANCHORS}")
    needs_ref = needs_base_velocity(weighting, anchor, reference, use_reference, lambda_c)
    if needs_ref and (v_ref is None or v_ref.shape != v.shape):
        raise ValueError(f"weighting {weighting!r} with anchor {anchor!r} and reference {reference!r} needs the "
                         f"base model's velocity "
                         f"v_ref of shape {tuple(v.shape)}, got {None if v_ref is None else tuple(v_ref.shape)}")
    m = None
    if token_mask is not None:
        if tuple(token_mask.shape) != (b, n):
            raise ValueError(f"token_mask must be (B, N) = ({b}, {n}), got {tuple(token_mask.shape)}")
        m = token_mask.to(v.dtype if v.is_floating_point() else torch.float32).float()
    vf, tf = v.float(), target.float()
    r = reward.float()
    if dense_max_t < 1.0:
        if t is None or tuple(t.shape) != (b,):
            raise ValueError(f"reward.dense_max_t < 1 needs the flow times t of shape ({b},)")
        row_mean = (r.mean(1) if m is None else (r * m).sum(1) / m.sum(1).clamp_min(1.0))[:, None]
        r = torch.where(t.to(r.device).float()[:, None] > dense_max_t, row_mean.expand_as(r), r)
    a = (alpha.float() if use_global else torch.ones(b)).to(r.device)
    err = (vf - tf).pow(2).mean(dim=-1)                                         # (B, N)
    if weighting == "paper":
        reward_term = _masked_mean(a[:, None] * r * err, m)
    else:
        rho = torch.where(r >= 0, a[:, None] * r, push_away * r)
        base = (v_ref if anchor == "base" else vf).float().detach()
        shaped = base + rho[..., None] * (tf - base)
        reward_term = _masked_mean((vf - shaped).pow(2).mean(dim=-1), m)
    if reference == "base" and v_ref is not None:
        reference_term = _masked_mean((vf - v_ref.float().detach()).pow(2).mean(dim=-1), m)
    else:
        reference_term = _masked_mean(err, m)
    if use_reference:
        total = reward_term + lambda_c * reference_term
    else:
        total, reference_term = reward_term, reference_term.detach()
    return LossParts(total=total, reward_term=reward_term, reference_term=reference_term)
