"""Optimiser, schedule and the one shared SRUM training step.

The toy benchmark and the torchrun train stage both call `train_step`, so the recipe (timestep sampling,
reward pooling, loss, clipping, stepping) exists once. It does no I/O and knows nothing about
distribution: data-parallel gradient averaging is the caller's (hooks or a DDP/FSDP-wrapped adapter).
Defaults follow the paper's Table 5 through TrainingConfig: AdamW (0.9, 0.95), eps 1e-15, weight decay 0,
linear warm-up then a constant learning rate, gradient clipping at 1.0, timestep shift 4.0 (unless the
model declares its own: `default_timestep_shift`, the toy's 1.0). Fine-tuning drops the prompt (and the
plan) for `training.prompt_dropout` of the samples, by default at the model's pretraining rate
(`default_prompt_dropout`), and drops the plan of think-mode records for `training.plan_dropout`, so the
unconditional branch of guidance and both generation modes keep learning.

When the reward needs the frozen base model's velocity (reward.weighting debiased, reward.reference base),
the step runs the model's training forward twice from the same random state, once on `reference_model`
without gradients, so both see the same x_t (checked: the two targets must be equal).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..config import RewardConfig, TrainingConfig
from ..rewards import pooling_matrix
from .loss import needs_base_velocity, sample_timesteps, srum_loss

# the paper's shift; a model adapter may declare its own (`default_timestep_shift`)
PAPER_TIMESTEP_SHIFT = 4.0


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainingConfig) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("build_optimizer: the model exposes no trainable parameters")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(float(cfg.betas[0]), float(cfg.betas[1])), eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


class WarmupConstant:
    """LR factor: linear from 1/warmup at step 0 to 1 at step warmup - 1, then 1. A class, not a lambda,
    so the scheduler's state_dict round-trips through a checkpoint."""

    def __init__(self, warmup_steps: int):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if self.warmup_steps == 0:
            return 1.0
        return min(1.0, (step + 1) / self.warmup_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupConstant(cfg.warmup_steps))


@lru_cache(maxsize=64)
def _pooling(n_in: int, n_out: int) -> torch.Tensor:
    return torch.from_numpy(pooling_matrix(n_in, n_out)).float()


def reward_tokens(reward: torch.Tensor, grid: Tuple[int, int], n_tokens: int) -> torch.Tensor:
    """Reward weights (B, N) in the token order of FlowOutput from either (B, N) weights or (B, H, W)
    maps at any resolution (area-weighted mean over each latent cell; a (B, gh, gw) map passes as is)."""
    gh, gw = int(grid[0]), int(grid[1])
    if reward.dim() == 2:
        if reward.shape[1] != n_tokens:
            raise ValueError(f"reward has {reward.shape[1]} tokens per image; the model produced {n_tokens}")
        return reward.float()
    if reward.dim() != 3:
        raise ValueError(f"reward must be (B, N) or (B, H, W), got shape {tuple(reward.shape)}")
    if gh * gw != n_tokens:
        raise ValueError(f"model grid {grid} does not have {n_tokens} tokens")
    r = reward.float()
    h, w = r.shape[1:]
    if (h, w) != (gh, gw):
        r = torch.einsum("gh,bhw,kw->bgk", _pooling(h, gh).to(r.device), r, _pooling(w, gw).to(r.device))
    return r.reshape(r.shape[0], gh * gw)


def _param_list(optimizer: torch.optim.Optimizer):
    return [p for g in optimizer.param_groups for p in g["params"]]


def needs_reference_model(reward: Optional[RewardConfig], cfg: TrainingConfig,
                          lambda_c: Optional[float] = None) -> bool:
    """Does the loss need the frozen base model's velocity? (at `lambda_c`, the reward's own when None)"""
    return reward is not None and needs_base_velocity(
        reward.weighting, reward.anchor, reward.reference, cfg.use_reference,
        reward.lambda_c if lambda_c is None else lambda_c)


def _rng_state(generator: Optional[torch.Generator]) -> torch.Tensor:
    return generator.get_state() if generator is not None else torch.get_rng_state()


def _set_rng_state(generator: Optional[torch.Generator], state: torch.Tensor) -> None:
    if generator is not None:
        generator.set_state(state)
    else:
        torch.set_rng_state(state)


def _dropped(prompts: Sequence[str], plans: Optional[Sequence[Optional[str]]], p_prompt: float, p_plan: float,
             generator: Optional[torch.Generator]) -> Tuple[List[str], Optional[List[Optional[str]]]]:
    """Prompt dropout (the prompt and its plan) and plan dropout; no random draw when a rate is 0."""
    b = len(prompts)
    prompts = list(prompts)
    plans = None if plans is None else list(plans)
    if p_prompt > 0:
        drop = (torch.rand(b, generator=generator) < p_prompt).tolist()
        prompts = ["" if d else p for p, d in zip(prompts, drop)]
        if plans is not None:
            plans = [None if d else p for p, d in zip(plans, drop)]
    if plans is not None and p_plan > 0 and any(plans):
        drop = (torch.rand(b, generator=generator) < p_plan).tolist()
        plans = [None if d else p for p, d in zip(plans, drop)]
    return prompts, plans


def train_step(model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, images: torch.Tensor,
               prompts: Sequence[str], reward_grid: torch.Tensor, alpha: torch.Tensor, cfg: TrainingConfig,
               lambda_c: float, generator: Optional[torch.Generator] = None, *,
               use_global: bool = True, plans: Optional[Sequence[Optional[str]]] = None,
               reward: Optional[RewardConfig] = None, reference_model: Any = None) -> Dict[str, float]:
    """One optimiser step of SRUM on a batch; returns floats: loss, reward_term, reference_term, lr,
    grad_norm (before clipping), t_mean and skipped (1.0 when the step was dropped for a non-finite
    gradient, so one bad batch cannot poison the weights).

    plans: each record's think text (None: generated in plain mode); reward: the weighting, reference,
    push-away and dense_max_t of the loss (None: the paper's loss); reference_model: the frozen base
    model, required when the loss needs its velocity (needs_reference_model)."""
    b = images.shape[0]
    if len(prompts) != b or reward_grid.shape[0] != b:
        raise ValueError(f"batch mismatch: {b} images, {len(prompts)} prompts, {reward_grid.shape[0]} reward maps")
    if plans is not None and len(plans) != b:
        raise ValueError(f"batch mismatch: {b} images but {len(plans)} plans")
    alpha = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
    if alpha.shape[0] != b:
        raise ValueError(f"batch mismatch: {b} images but {alpha.shape[0]} alpha values")
    need_ref = needs_reference_model(reward, cfg, lambda_c)     # at the lambda_c this step uses
    if need_ref and reference_model is None:
        raise ValueError(f"reward.weighting {reward.weighting!r} / reward.reference {reward.reference!r} needs the "
                         "frozen base model (reference_model)")
    takes_plans = "plans" in inspect.signature(model.training_forward).parameters
    if plans is not None and any(plans) and not takes_plans and cfg.plan_dropout < 1.0:
        raise ValueError(f"the {getattr(model, 'name', 'model')} adapter cannot condition training on think texts; "
                         "set training.plan_dropout: 1.0 to train its think-mode samples on the prompt alone")
    if not takes_plans:
        plans = None
    params = _param_list(optimizer)
    device = params[0].device
    shift = cfg.timestep_shift if cfg.timestep_shift is not None else float(
        getattr(model, "default_timestep_shift", PAPER_TIMESTEP_SHIFT))
    p_prompt = cfg.prompt_dropout if cfg.prompt_dropout is not None else float(
        getattr(model, "default_prompt_dropout", 0.0))
    prompts, plans = _dropped(prompts, plans, p_prompt, cfg.plan_dropout, generator)
    t = sample_timesteps(b, shift, generator, device=device)
    optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.bf16
                else contextlib.nullcontext())
    kw = {"plans": plans} if plans is not None else {}
    v_ref = None
    with autocast:
        before = _rng_state(generator) if need_ref else None
        out = model.training_forward(images, list(prompts), t, generator=generator, **kw)
        if need_ref:
            after = _rng_state(generator)
            _set_rng_state(generator, before)
            with torch.no_grad():
                ref = reference_model.training_forward(images, list(prompts), t, generator=generator, **kw)
            _set_rng_state(generator, after)
            if ref.target.shape != out.target.shape or not torch.equal(ref.target, out.target):
                raise RuntimeError("the reference model's training forward drew other noise than the model's; its "
                                   "adapter must draw all randomness from the generator it is given")
            v_ref = ref.v
    n = out.v.shape[1]
    reward_t = reward_tokens(reward_grid.to(out.v.device), out.grid, n)
    rc = reward or RewardConfig()
    parts = srum_loss(out.v, out.target, reward_t, alpha.to(out.v.device), lambda_c, out.token_mask,
                      use_global=use_global, use_reference=cfg.use_reference, weighting=rc.weighting,
                      reference=rc.reference, v_ref=v_ref,
                      push_away=rc.push_away, t=t, dense_max_t=rc.dense_max_t, anchor=rc.anchor)
    lr = float(optimizer.param_groups[0]["lr"])
    loss = parts.total
    # backward even on a non-finite loss: under data parallelism every rank must join the gradient
    # all-reduce, and the (averaged) gradient norm is then the same skip decision on every rank
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    skipped = not math.isfinite(grad_norm)
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    # the schedule follows the step index even through a skipped step, so a resume sees the same lr
    with warnings.catch_warnings():
        # torch warns when the scheduler steps without an optimiser step, which is what a skip means
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        scheduler.step()
    return {"loss": float(loss.detach()), "reward_term": float(parts.reward_term.detach()),
            "reference_term": float(parts.reference_term.detach()), "lr": lr, "grad_norm": grad_norm,
            "t_mean": float(t.mean()), "skipped": float(skipped)}
