"""The SRUM loss algebra, timestep sampling, and the shared training step."""

from __future__ import annotations

import math

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
