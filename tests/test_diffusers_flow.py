"""The generic flow-matching adapter on a tiny random SD3-class model in diffusers layout (built locally):
generation with the flow-matching scheduler and text CFG, the SRUM training forward, the convention
x_t = (1 - t) x0 + t eps / target eps - x0, a real SRUM train step, and parameter errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from srum_jobs.models.common import ParamError  # noqa: E402
from srum_jobs.models.diffusers_flow import DiffusersFlowModel, patchify, save_random_sd3  # noqa: E402


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return save_random_sd3(tmp_path_factory.mktemp("sd3-tiny"), seed=0)


@pytest.fixture(scope="module")
def model(sd3_dir):
    return DiffusersFlowModel({"device": "cpu"}, checkpoint=str(sd3_dir))


def test_patchify_is_row_major_over_the_grid():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tok = patchify(x, 2)
    assert tok.shape == (2, 6, 12)
    # token (row 1, col 2) of image 1 holds channel-major the 2x2 cell at pixels [2:4, 4:6]
    assert torch.equal(tok[1, 1 * 3 + 2], x[1, :, 2:4, 4:6].reshape(-1))


def test_training_forward_follows_the_projects_flow_convention(model):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t = torch.tensor([0.25, 0.75])
    out = model.training_forward(images, ["a red cube", "a blue ball"], t, generator=torch.Generator().manual_seed(1))
    assert out.grid == (4, 4) and tuple(out.v.shape) == (2, 16, 4 * 2 * 2) and out.v.shape == out.target.shape
    with torch.no_grad():
        x0 = (model.vae.encode(images).latent_dist.mean - model.shift) * model.scaling
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out.target, patchify(eps - x0, 2), atol=1e-6)
    # the transformer saw x_t = (1 - t) x0 + t eps at SD3's timestep t * 1000
    x_t = (1 - t.view(2, 1, 1, 1)) * x0 + t.view(2, 1, 1, 1) * eps
    cond, pooled = model.encode_text(["a red cube", "a blue ball"])
    with torch.no_grad():
        v = model.transformer(hidden_states=x_t, encoder_hidden_states=cond, pooled_projections=pooled,
                              timestep=t * 1000, return_dict=False)[0]
    assert torch.allclose(out.v.detach(), patchify(v, 2), atol=1e-5)


def test_a_srum_train_step_changes_only_the_transformer(model):
    from srum_jobs.config import TrainingConfig
    from srum_jobs.training.optim import build_optimizer, build_scheduler, train_step

    cfg = TrainingConfig(lr=1e-3, warmup_steps=0, steps=1)
    before_t = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    before_v = {k: v.clone() for k, v in model.vae.state_dict().items()}
    opt = build_optimizer(model.trainable_parameters(), cfg)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    out = train_step(model, opt, build_scheduler(opt, cfg), images, ["a", "b"], torch.ones(2, 16, 16), torch.ones(2),
                     cfg, lambda_c=0.5, generator=torch.Generator().manual_seed(4))
    assert np.isfinite(out["loss"]) and out["skipped"] == 0.0
    after = model.transformer.state_dict()
    assert any(not torch.equal(before_t[k], after[k]) for k in after)
    assert all(torch.equal(before_v[k], v) for k, v in model.vae.state_dict().items())
    model.load_state_dict(before_t)


def test_generate_uses_guidance_and_is_seeded(model):
    a = model.generate(["a red cube"], [3], steps=3, guidance=1.0, resolution=16)[0]
    b = model.generate(["a red cube"], [3], steps=3, guidance=5.0, resolution=16)[0]
    c = model.generate(["a blue ball"], [3], steps=3, guidance=5.0, resolution=16)[0]
    assert a.image.size == (16, 16)
    assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))   # CFG changes the sample
    assert not np.array_equal(np.asarray(b.image), np.asarray(c.image))   # so does the prompt
    with pytest.raises(ValueError, match="multiple of 4"):
        model.generate(["x"], [0], resolution=18)
    with pytest.raises(ValueError, match="no think mode"):
        model.generate(["x"], [0], think=True)


def test_understanding_is_delegated_or_refused(model, sd3_dir, tmp_path):
    with pytest.raises(NotImplementedError, match="understanding_model_path"):
        model.understand([np.zeros((8, 8, 3), np.uint8)], ["?"])
    pytest.importorskip("torchvision")
    from srum_jobs.models.hf_judge import save_random_qwen2_5_vl

    vlm = save_random_qwen2_5_vl(tmp_path / "vlm")
    m = DiffusersFlowModel({"device": "cpu", "understanding_model_path": str(vlm), "understanding_max_batch_size": "2"},
                           checkpoint=str(sd3_dir))
    out = m.understand([np.zeros((32, 32, 3), np.uint8)] * 3, ["What is it?"] * 3, max_new_tokens=4)
    assert len(out) == 3 and all(isinstance(a, str) and isinstance(t, str) for a, t in out)


def test_parameter_and_layout_errors(sd3_dir, tmp_path):
    with pytest.raises(ParamError, match="model_path"):
        DiffusersFlowModel({})
    with pytest.raises(ParamError, match="no transformer/ folder"):
        DiffusersFlowModel({}, checkpoint=str(tmp_path))
    with pytest.raises(ParamError, match=r"unknown parameter\(s\) \['stepz'\]"):
        DiffusersFlowModel({"stepz": "3"}, checkpoint=str(sd3_dir))
    with pytest.raises(ParamError, match="text_dropout=2.0 must be <= 1"):
        DiffusersFlowModel({"text_dropout": "2"}, checkpoint=str(sd3_dir))


def test_predicted_x0_reads_the_generate_loop(model):
    """The per-step analysis hook: the last step is the generated image; an earlier step is the decoded
    x0 = x_t - sigma v of the very same loop (same seeds), and differs from it."""
    import numpy as np

    prompts, seeds = ["a red cube", "a blue ball"], [1, 2]
    x0 = model.predicted_x0(prompts, seeds, steps=3, guidance=2.0, at_steps=[1, 3])
    final = model.generate(prompts, seeds, steps=3, guidance=2.0)
    assert [im.size for im in x0[1]] == [g.image.size for g in final]
    assert all(np.array_equal(np.asarray(a), np.asarray(b.image)) for a, b in zip(x0[3], final))
    with pytest.raises(ValueError, match="outside 1..3"):
        model.predicted_x0(prompts, seeds, steps=3, at_steps=[0])
