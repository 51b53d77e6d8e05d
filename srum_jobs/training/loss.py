"""The SRUM objective: rectified-flow matching weighted per latent token by the reward map.

    x_t    = (1 - t) x0 + t eps,   target = eps - x0   (the model adapter builds both; see models/base.py)
    err    = (v - target)^2, averaged over channels        -> (B, N)
    reward = mean_tokens(alpha * R * err)
    ref    = mean_tokens(err)
    total  = reward + lambda_c * ref

R is the reward map pooled to the latent grid (rewards.py), alpha the global factor (g + 1) / 2 of the
`signed` mode (1 in `reference` mode, where it is already inside R). With R = 1, alpha = 1, lambda_c = 0
this is exactly the plain flow-matching MSE. A token's gradient is proportional to its total weight
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
    reward_term: torch.Tensor       # mean(alpha * R * err)
    reference_term: torch.Tensor    # mean(err); part of `total` (times lambda_c) only when use_reference


def srum_loss(v: torch.Tensor, target: torch.Tensor, reward: torch.Tensor, alpha: torch.Tensor, lambda_c: float,
              token_mask: Optional[torch.Tensor] = None, *, use_global: bool = True,
              use_reference: bool = True) -> LossParts:
    """v, target (B, N, C); reward (B, N); alpha (B,); token_mask (B, N) bool (False = padding)."""
    if v.shape != target.shape or v.dim() != 3:
        raise ValueError(f"v and target must both be (B, N, C); got v {tuple(v.shape)}, target {tuple(target.shape)}")
    b, n, _ = v.shape
    if tuple(reward.shape) != (b, n):
        raise ValueError(f"reward must be (B, N) = ({b}, {n}), got {tuple(reward.shape)}")
    if tuple(alpha.shape) != (b,):
        raise ValueError(f"alpha must be (B,) = ({b},), got {tuple(alpha.shape)}")
    if lambda_c < 0:
        raise ValueError(f"lambda_c must be >= 0, got {lambda_c}")
    err = (v.float() - target.float()).pow(2).mean(dim=-1)                        # (B, N)
    a = alpha.to(err) if use_global else torch.ones_like(alpha, dtype=err.dtype)
    weighted = a[:, None] * reward.to(err) * err
    if token_mask is None:
        reward_term, reference_term = weighted.mean(), err.mean()
    else:
        if tuple(token_mask.shape) != (b, n):
            raise ValueError(f"token_mask must be (B, N) = ({b}, {n}), got {tuple(token_mask.shape)}")
        m = token_mask.to(err)
        count = m.sum().clamp_min(1.0)  # an all-padding batch gives 0, not NaN
        reward_term, reference_term = (weighted * m).sum() / count, (err * m).sum() / count
    if use_reference:
        total = reward_term + lambda_c * reference_term
    else:
        total, reference_term = reward_term, reference_term.detach()
    return LossParts(total=total, reward_term=reward_term, reference_term=reference_term)
