"""The SRUM loss algebra, timestep sampling, and the shared training step."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from srum_jobs.config import TrainingConfig
from srum_jobs.models.base import FlowOutput
from srum_jobs.training.loss import sample_timesteps, shift_timesteps, srum_loss
from srum_jobs.training.optim import WarmupConstant, build_optimizer, build_scheduler, reward_tokens, train_step


def _batch(b=3, n=8, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, eps, v = (torch.randn(b, n, c, generator=g) for _ in range(3))
    return v, eps - x0


# --------------------------------------------------------------------------------------- algebra


def test_r1_alpha1_lambda0_is_plain_flow_matching_mse():
    v, target = _batch()
    parts = srum_loss(v, target, torch.ones(3, 8), torch.ones(3), 0.0)
    plain = torch.nn.functional.mse_loss(v, target)
    assert torch.allclose(parts.total, plain) and torch.allclose(parts.reward_term, plain)
    assert torch.allclose(parts.reference_term, plain)


def test_total_is_reward_plus_lambda_times_reference_with_alpha():
    v, target = _batch()
    r = torch.rand(3, 8)
    alpha = torch.tensor([0.2, 0.5, 1.0])
    parts = srum_loss(v, target, r, alpha, 0.5)
    err = ((v - target) ** 2).mean(-1)
    assert torch.allclose(parts.reward_term, (alpha[:, None] * r * err).mean())
    assert torch.allclose(parts.total, (alpha[:, None] * r * err).mean() + 0.5 * err.mean())
    # ablations: no global factor, no reference term
    assert torch.allclose(srum_loss(v, target, r, alpha, 0.5, use_global=False).reward_term, (r * err).mean())
    no_ref = srum_loss(v, target, r, alpha, 0.5, use_reference=False)
    assert torch.allclose(no_ref.total, no_ref.reward_term) and not no_ref.reference_term.requires_grad


def test_gradient_is_zero_where_total_weight_is_zero():
    v, target = _batch(b=2, n=4)
    v.requires_grad_(True)
    r = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, -1.0, 0.3]])
    alpha = torch.tensor([1.0, 0.5])
    # lambda_c 0: weight zero where R = 0; token (1, 2): alpha * R + lambda_c = 0.5 * -1 + 0.5 = 0
    srum_loss(v, target, r, alpha, 0.0).total.backward()
    zero = r == 0
    assert torch.all(v.grad[zero] == 0) and torch.all(v.grad[~zero].abs().sum(-1) > 0)
    v.grad = None
    srum_loss(v, target, r, alpha, 0.5).total.backward()
    assert torch.all(v.grad[1, 2] == 0)
    assert torch.all(v.grad[0, 1].abs() > 0)          # R = 0 but the reference term still trains it


def test_signed_negative_region_pushes_prediction_away_from_target():
    """Two tokens: praised (R = +1) and penalised (R = -1). A gradient step moves the first towards its
    target and the second away from it."""
    target = torch.zeros(1, 2, 1)
    v = torch.tensor([[[0.5], [0.5]]], requires_grad=True)
    r = torch.tensor([[1.0, -1.0]])
    srum_loss(v, target, r, torch.ones(1), 0.0).total.backward()
    assert v.grad[0, 0, 0] > 0 and v.grad[0, 1, 0] < 0
    with torch.no_grad():
        stepped = v - 0.1 * v.grad
    dist = (stepped - target).abs()[0, :, 0]
    assert dist[0] < 0.5 < dist[1]
    # with lambda_c large enough the total weight of the penalised token is positive again
    v.grad = None
    srum_loss(v, target, r, torch.ones(1), 1.5).total.backward()
    assert v.grad[0, 1, 0] > 0


def test_token_mask_excludes_padding():
    v, target = _batch(b=2, n=4)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    v2 = v.clone()
    v2[0, 2:] += 100.0           # padding tokens full of garbage
    a = srum_loss(v2, target, torch.ones(2, 4), torch.ones(2), 0.5, token_mask=mask)
    err = ((v - target) ** 2).mean(-1)
    assert torch.allclose(a.reference_term, err[mask].mean())
    empty = srum_loss(v, target, torch.ones(2, 4), torch.ones(2), 0.5, token_mask=torch.zeros(2, 4, dtype=torch.bool))
    assert empty.total.item() == 0.0


@pytest.mark.parametrize("kw, msg", [({"reward": torch.ones(2, 8)}, "reward"), ({"alpha": torch.ones(2)}, "alpha"),
                                     ({"lambda_c": -0.1}, "lambda_c")])
def test_shape_and_value_errors(kw, msg):
    v, target = _batch()
    args = {"reward": torch.ones(3, 8), "alpha": torch.ones(3), "lambda_c": 0.5, **kw}
    with pytest.raises(ValueError, match=msg):
        srum_loss(v, target, **args)


# ------------------------------------------------------------------------------------- timesteps


def test_shift_formula_and_sampling():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(shift_timesteps(t, 4.0), 4 * t / (1 + 3 * t))
    assert torch.allclose(shift_timesteps(t, 1.0), t)
    a = sample_timesteps(4096, 4.0, torch.Generator().manual_seed(1))
    b = sample_timesteps(4096, 4.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert 0 < a.min() and a.max() < 1
    # logit-normal(0, 1) has median 0.5; the shift s=4 maps it to 4*0.5/(1+3*0.5) = 0.8
    assert abs(a.median().item() - 0.8) < 0.02
    u = sample_timesteps(4096, 1.0, torch.Generator().manual_seed(1))
    assert abs(u.median().item() - 0.5) < 0.02


def test_warmup_then_constant():
    f = WarmupConstant(4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert WarmupConstant(0)(0) == 1.0


# ---------------------------------------------------------------------------------- training step


class TinyFlowModel(torch.nn.Module):
    """A per-token linear velocity model on 2x2-pixel patches: enough to exercise train_step."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(13, 12)

    def training_forward(self, images, prompts, t, generator=None):
        b, c, h, w = images.shape
        x0 = images.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 12)
        eps = torch.randn(x0.shape, generator=generator)
        tt = t[:, None, None]
        xt = (1 - tt) * x0 + tt * eps
        v = self.lin(torch.cat([xt, tt.expand(-1, xt.shape[1], 1)], dim=-1))
        return FlowOutput(v=v, target=eps - x0, grid=(h // 2, w // 2))

    def trainable_parameters(self):
        return self.parameters()


def test_reward_tokens_pools_full_resolution_maps_to_the_grid():
    maps = torch.zeros(1, 4, 6)
    maps[0, :2, :3] = 1.0
    assert torch.allclose(reward_tokens(maps, (2, 2), 4), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    odd = torch.zeros(1, 1, 3)
    odd[0, 0, 0] = 1.0
    assert torch.allclose(reward_tokens(odd, (1, 2), 2), torch.tensor([[1 / 1.5, 0.0]]))
    with pytest.raises(ValueError, match="tokens"):
        reward_tokens(torch.ones(1, 5), (2, 2), 4)


def test_train_step_steps_clips_and_reports():
    torch.manual_seed(0)
    model = TinyFlowModel()
    cfg = TrainingConfig(lr=1e-2, warmup_steps=2, grad_clip=0.5)
    opt = build_optimizer(model.trainable_parameters(), cfg)
    sched = build_scheduler(opt, cfg)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-15 and opt.defaults["weight_decay"] == 0
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    maps = torch.ones(2, 8, 8)
    before = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    out1 = train_step(model, opt, sched, images, ["a", "b"], maps, torch.ones(2), cfg, 0.5, g)
    out2 = train_step(model, opt, sched, images, ["a", "b"], maps, torch.ones(2), cfg, 0.5, g)
    assert set(out1) >= {"loss", "reward_term", "reference_term", "lr", "grad_norm"}
    assert all(isinstance(v, float) for v in out1.values())
    assert (out1["lr"], out2["lr"]) == (pytest.approx(5e-3), pytest.approx(1e-2))   # linear warm-up
    assert out1["loss"] == pytest.approx(out1["reward_term"] + 0.5 * out1["reference_term"], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert out1["skipped"] == 0.0 and out1["grad_norm"] > 0


def test_train_step_zero_reward_without_reference_does_not_move_weights():
    model = TinyFlowModel()
    cfg = TrainingConfig(lr=1e-2, warmup_steps=0, use_reference=False)
    opt, before = build_optimizer(model.parameters(), cfg), [p.detach().clone() for p in model.parameters()]
    out = train_step(model, opt, build_scheduler(opt, cfg), torch.zeros(1, 3, 4, 4), ["x"], torch.zeros(1, 4, 4),
                     torch.ones(1), cfg, 0.5, torch.Generator().manual_seed(0))
    assert out["loss"] == 0.0 and out["grad_norm"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_train_step_skips_non_finite_gradients():
    model = TinyFlowModel()
    cfg = TrainingConfig(lr=1e-2, warmup_steps=0)
    opt = build_optimizer(model.parameters(), cfg)
    before = [p.detach().clone() for p in model.parameters()]
    out = train_step(model, opt, build_scheduler(opt, cfg), torch.zeros(1, 3, 4, 4), ["x"],
                     torch.full((1, 4, 4), float("nan")), torch.ones(1), cfg, 0.5, torch.Generator().manual_seed(0))
    assert out["skipped"] == 1.0 and math.isnan(out["loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_train_step_rejects_batch_mismatch():
    model = TinyFlowModel()
    cfg = TrainingConfig()
    opt = build_optimizer(model.parameters(), cfg)
    with pytest.raises(ValueError, match="batch mismatch"):
        train_step(model, opt, build_scheduler(opt, cfg), torch.zeros(2, 3, 4, 4), ["x"], torch.ones(2, 4, 4),
                   torch.ones(2), cfg, 0.5)


def test_scheduler_state_roundtrips():
    model = TinyFlowModel()
    cfg = TrainingConfig(warmup_steps=10)
    opt = build_optimizer(model.parameters(), cfg)
    s = build_scheduler(opt, cfg)
    for _ in range(3):
        opt.step()
        s.step()
    opt2 = build_optimizer(model.parameters(), cfg)
    s2 = build_scheduler(opt2, cfg)
    s2.load_state_dict(s.state_dict())
    assert s2.last_epoch == 3 and s2.get_last_lr() == s.get_last_lr()


def test_train_step_bf16_autocast_path_runs_on_cpu():
    """The bf16 branch (used on GPUs) through CPU autocast: the loss is still computed in float32."""
    model = TinyFlowModel()
    cfg = TrainingConfig(lr=1e-3, warmup_steps=0, bf16=True)
    opt = build_optimizer(model.parameters(), cfg)
    out = train_step(model, opt, build_scheduler(opt, cfg), torch.rand(2, 3, 4, 4), ["x", "y"], torch.ones(2, 2, 2),
                     torch.ones(2), cfg, 0.5, torch.Generator().manual_seed(0))
    assert out["skipped"] == 0.0 and math.isfinite(out["loss"]) and out["grad_norm"] > 0


# ------------------------------------------------------------------------------- debiased weighting


def _minimiser_gradient(weighting, reward, alpha, targets, v_star, v_ref=None, lambda_c=0.0, reference="sample"):
    """The gradient of the loss at a shared prediction v_star for a batch of samples that share one x_t
    (so one network output serves all of them): zero where v_star minimises the loss."""
    b, n, c = targets.shape
    v = v_star.expand(b, n, c).clone().requires_grad_(True)
    srum_loss(v, targets, reward, alpha, lambda_c, weighting=weighting, v_ref=v_ref, reference=reference,
              use_reference=lambda_c > 0).total.backward()
    return v.grad.sum(0)           # the shared output's gradient is the sum over the samples


def test_debiased_expected_target_is_the_data_flow_where_the_paper_is_tilted():
    """One x_t, two equally likely samples: A has an object at token 0, B at token 1 (background
    elsewhere); both passed (g = 1). The paper's weights (reference map: 1 on the object, 0.5 on the
    background) pull each token toward the sample with the object there; the debiased target's minimiser
    is the data flow E[eps - x0 | x_t], the plain mean of the two targets."""
    from srum_jobs.rewards import build_reward_map

    targets = torch.tensor([[[1.0], [-1.0]], [[-1.0], [1.0]]])           # (2 samples, 2 tokens, 1 channel)
    flow = targets.mean(0)                                               # the data flow at this x_t
    boxes = [[[0, 0, 1, 1]], [[1, 0, 2, 1]]]                              # token n = pixel (0, n)
    paper_maps = torch.stack([torch.from_numpy(build_reward_map(b, [1.0], 1.0, 1, 2, mode="reference").pixels)
                              .reshape(2) for b in boxes])
    assert paper_maps.tolist() == [[1.0, 0.5], [0.5, 1.0]]
    ones = torch.ones(2)
    tilted = _minimiser_gradient("paper", paper_maps, ones, targets, flow)
    assert tilted.abs().max() > 0.1                                      # the data flow is not its minimum
    paper_min = (paper_maps[..., None] * targets).sum(0) / paper_maps.sum(0)[..., None]
    assert torch.allclose(_minimiser_gradient("paper", paper_maps, ones, targets, paper_min), torch.zeros(2, 1),
                          atol=1e-6)
    assert paper_min[0, 0] > flow[0, 0] and paper_min[1, 0] > flow[1, 0]  # leans toward the object's sample
    corrective = torch.stack([torch.from_numpy(build_reward_map(b, [1.0], 1.0, 1, 2, mode="corrective").pixels)
                              .reshape(2) for b in boxes])
    assert corrective.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    alpha = torch.tensor([build_reward_map(b, [1.0], 1.0, 1, 2, mode="corrective").alpha for b in boxes])
    v_base = torch.tensor([[0.3], [-0.7]]).expand(2, 2, 1)               # whatever the base predicts
    assert torch.allclose(_minimiser_gradient("debiased", corrective, alpha, targets, flow, v_base),
                          torch.zeros(2, 1), atol=1e-6)


def test_debiased_with_full_praise_is_plain_flow_matching():
    v, target = _batch()
    v_ref = torch.randn_like(v)
    parts = srum_loss(v, target, torch.ones(3, 8), torch.ones(3), 0.0, weighting="debiased", v_ref=v_ref)
    assert torch.allclose(parts.total, torch.nn.functional.mse_loss(v, target))


def test_debiased_target_moves_between_base_and_sample_and_pushes_away_boundedly():
    target = torch.tensor([[[1.0], [1.0], [1.0]]])
    v_ref = torch.zeros(1, 3, 1)
    r = torch.tensor([[1.0, 1.0, -0.8]])      # corrective map: praise, praise, a penalised region
    alpha = torch.tensor([0.25])
    # the minimiser per token: v_ref + rho (target - v_ref), rho = alpha (0.25) on praise, push * R below 0
    best = torch.tensor([[[0.25], [0.25], [-0.4]]])
    v = best.clone().requires_grad_(True)
    srum_loss(v, target, r, alpha, 0.0, weighting="debiased", v_ref=v_ref, push_away=0.5).total.backward()
    assert torch.allclose(v.grad, torch.zeros_like(v.grad), atol=1e-7)
    # bounded: moving the penalised token further away raises the debiased loss; the paper's signed
    # weight rewards it without limit
    def loss(weighting, x):
        vv = best.clone()
        vv[0, 2, 0] = x
        return float(srum_loss(vv, target, r, torch.ones(1), 0.0, weighting=weighting, v_ref=v_ref,
                               push_away=0.5).total)
    assert loss("debiased", -5.0) > loss("debiased", -0.5)
    assert loss("paper", -50.0) < loss("paper", -5.0) < loss("paper", -0.5)


def test_reference_term_anchors_to_the_base_velocity():
    v, target = _batch()
    v_ref = torch.randn_like(v)
    parts = srum_loss(v, target, torch.ones(3, 8), torch.ones(3), 0.5, reference="base", v_ref=v_ref)
    assert torch.allclose(parts.reference_term, ((v - v_ref) ** 2).mean())
    assert torch.allclose(parts.total, ((v - target) ** 2).mean() + 0.5 * ((v - v_ref) ** 2).mean())
    with pytest.raises(ValueError, match="needs the base model's velocity"):
        srum_loss(v, target, torch.ones(3, 8), torch.ones(3), 0.5, reference="base")
    with pytest.raises(ValueError, match="needs the base model's velocity"):
        srum_loss(v, target, torch.ones(3, 8), torch.ones(3), 0.5, weighting="debiased")


def _grad(**kw):
    v, target = _batch(seed=1)
    g = torch.Generator().manual_seed(2)
    v_ref = torch.randn(v.shape, generator=g)
    r = torch.rand(3, 8, generator=g) * 2 - 1          # praise and penalised tokens
    v = v.clone().requires_grad_(True)
    srum_loss(v, target, r, kw.pop("alpha"), kw.pop("lambda_c"), weighting=kw.pop("weighting", "debiased"),
              v_ref=v_ref, **kw).total.backward()
    return v.grad, r


def test_debiased_base_reference_term_only_shrinks_rho():
    # |v - (v_base + rho d)|^2 + lam |v - v_base|^2 = (1 + lam) |v - (v_base + rho / (1 + lam) d)|^2 + const:
    # the lambda_c anchor of the debiased weighting is the no-reference loss with rho / (1 + lam), times 1 + lam
    alpha, lam, push = torch.tensor([0.9, 0.4, 0.7]), 0.5, 0.6
    with_ref, _ = _grad(alpha=alpha, lambda_c=lam, reference="base", push_away=push)
    without, _ = _grad(alpha=alpha / (1 + lam), lambda_c=lam, reference="base", push_away=push / (1 + lam),
                       use_reference=False)
    assert torch.allclose(with_ref, (1 + lam) * without, atol=1e-6)
    same_rho, _ = _grad(alpha=alpha, lambda_c=lam, reference="base", push_away=push, use_reference=False)
    assert not torch.allclose(with_ref, (1 + lam) * same_rho, atol=1e-3)


def test_self_anchor_gradient_is_the_map_as_per_token_loss_weights():
    # anchor "self" blends toward the model's own prediction without gradient: its gradient is rho * d(err)/dv,
    # the paper's content-dependent weighting (here push_away 1 and no global factor, so rho = R everywhere)
    kw = dict(alpha=torch.ones(3), lambda_c=0.0, use_global=False, use_reference=False, push_away=1.0)
    self_anchor, r = _grad(anchor="self", **kw)
    paper, _ = _grad(weighting="paper", **kw)
    base_anchor, _ = _grad(**kw)
    assert torch.allclose(self_anchor, paper, atol=1e-6)
    assert not torch.allclose(self_anchor, base_anchor, atol=1e-3)
    # nothing of the base is needed then
    v, target = _batch()
    srum_loss(v, target, r, torch.ones(3), 0.5, weighting="debiased", anchor="self", use_reference=False)
    with pytest.raises(ValueError, match="reward.anchor 'frozen'"):
        srum_loss(v, target, r, torch.ones(3), 0.5, weighting="debiased", anchor="frozen", v_ref=v)


def test_anchor_setting_is_validated_and_decides_whether_the_base_runs():
    from srum_jobs.config import RewardConfig
    from srum_jobs.training.optim import needs_reference_model

    with pytest.raises(ValueError, match="reward.anchor 'self' only applies to weighting 'debiased'"):
        RewardConfig(anchor="self")
    tc, no_ref = TrainingConfig(), TrainingConfig(use_reference=False)
    assert needs_reference_model(RewardConfig(weighting="debiased", mode="corrective"), no_ref)
    assert not needs_reference_model(RewardConfig(weighting="debiased", mode="corrective", anchor="self"), no_ref)
    assert needs_reference_model(RewardConfig(weighting="debiased", mode="corrective", anchor="self",
                                              reference="base"), tc)


def test_dense_map_only_below_dense_max_t():
    v, target = _batch(b=2, n=4)
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    t = torch.tensor([0.2, 0.9])
    err = ((v - target) ** 2).mean(-1)
    parts = srum_loss(v, target, r, torch.ones(2), 0.0, t=t, dense_max_t=0.5)
    expected = torch.cat([r[0] * err[0], 0.25 * err[1]]).mean()      # t > 0.5: the row's mean, 0.25
    assert torch.allclose(parts.total, expected)
    with pytest.raises(ValueError, match="dense_max_t"):
        srum_loss(v, target, r, torch.ones(2), 0.0, dense_max_t=0.5)


@pytest.mark.parametrize("kw, msg", [({"weighting": "fancy"}, "reward.weighting"),
                                     ({"reference": "teacher"}, "reward.reference"),
                                     ({"push_away": 1.5}, "push_away")])
def test_weighting_options_are_checked(kw, msg):
    v, target = _batch()
    with pytest.raises(ValueError, match=msg):
        srum_loss(v, target, torch.ones(3, 8), torch.ones(3), 0.5, v_ref=v, **kw)


class PlanFlowModel(TinyFlowModel):
    """TinyFlowModel that also reads plans (a learned offset per sample with a plan) and records what it saw."""

    default_timestep_shift = 1.0
    default_prompt_dropout = 0.0

    def __init__(self):
        super().__init__()
        self.plan_bias = torch.nn.Parameter(torch.ones(12))
        self.seen = []

    def training_forward(self, images, prompts, t, generator=None, plans=None):
        self.seen.append((list(prompts), None if plans is None else list(plans), t.clone()))
        out = super().training_forward(images, prompts, t, generator)
        if plans is not None:
            has = torch.tensor([p is not None for p in plans], dtype=torch.float32)[:, None, None]
            out.v = out.v + has * self.plan_bias
        return out


def _step(model, cfg, plans=None, reward=None, reference_model=None, seed=0):
    opt = build_optimizer(model.trainable_parameters(), cfg)
    return train_step(model, opt, build_scheduler(opt, cfg), torch.rand(4, 3, 4, 4, generator=torch.Generator()
                      .manual_seed(1)) * 2 - 1, ["a", "b", "c", "d"], torch.ones(4, 4, 4), torch.ones(4), cfg, 0.5,
                      torch.Generator().manual_seed(seed), plans=plans, reward=reward, reference_model=reference_model)


def test_train_step_plan_and_prompt_dropout():
    plans = ["p1", "p2", None, "p4"]
    m = PlanFlowModel()
    _step(m, TrainingConfig(plan_dropout=0.0, prompt_dropout=0.0), plans)
    assert m.seen[-1][:2] == (["a", "b", "c", "d"], plans)
    _step(m, TrainingConfig(plan_dropout=1.0, prompt_dropout=0.0), plans)
    assert m.seen[-1][1] == [None] * 4                       # every plan dropped: plain mode
    m.seen.clear()
    for seed in range(20):
        _step(m, TrainingConfig(plan_dropout=0.5, prompt_dropout=0.3), plans, seed=seed)
    dropped_prompts = [p == "" for ps, _, _ in m.seen for p in ps]
    assert 0.1 < np.mean(dropped_prompts) < 0.5
    # a dropped prompt drops its plan too; some plans are dropped while their prompt stays
    pairs = [(p, q) for ps, qs, _ in m.seen for p, q in zip(ps, qs)]
    assert all(q is None for p, q in pairs if p == "")
    assert any(q is None for (p, q), orig in zip(pairs, plans * 20) if p and orig)
    # the model's own timestep shift (1.0: median 0.5) applies when training.timestep_shift is unset
    ts = torch.cat([t for _, _, t in m.seen])
    assert abs(ts.median().item() - 0.5) < 0.15


def test_train_step_with_a_frozen_reference_model():
    import copy

    from srum_jobs.config import RewardConfig

    torch.manual_seed(0)
    model = PlanFlowModel()
    ref = copy.deepcopy(model).requires_grad_(False)
    cfg = TrainingConfig(lr=1e-2, warmup_steps=0, prompt_dropout=0.0)
    rc = RewardConfig(weighting="debiased", mode="corrective", reference="base")
    with pytest.raises(ValueError, match="needs the frozen base model"):
        _step(model, cfg, reward=rc)
    out = _step(model, cfg, reward=rc, reference_model=ref)
    # at the start the model is the base: the reference term is 0 and the debiased target is the sample's
    assert out["reference_term"] == pytest.approx(0.0, abs=1e-10) and out["loss"] > 0
    plain = PlanFlowModel()
    plain.load_state_dict(ref.state_dict())
    # rho = 1: the debiased term is plain flow matching, the paper's reward term with R = alpha = 1
    assert _step(plain, cfg)["reward_term"] == pytest.approx(out["loss"], rel=1e-5)

    class Unseeded(PlanFlowModel):
        def training_forward(self, images, prompts, t, generator=None, plans=None):
            return super().training_forward(images, prompts, t, None, plans)   # ignores the generator

    with pytest.raises(RuntimeError, match="drew other noise"):
        _step(Unseeded(), cfg, reward=rc, reference_model=Unseeded())


def test_train_step_refuses_plans_an_adapter_cannot_read():
    cfg = TrainingConfig(prompt_dropout=0.0)
    with pytest.raises(ValueError, match="cannot condition training on think texts"):
        _step(TinyFlowModel(), cfg, plans=["p", None, None, None])
    assert math.isfinite(_step(TinyFlowModel(), TrainingConfig(prompt_dropout=0.0, plan_dropout=1.0),
                               plans=["p", None, None, None])["loss"])
