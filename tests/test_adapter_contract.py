"""Every UnifiedModel adapter keeps the same contract (srum_jobs/models/adapter_contract.py): the toy model,
the diffusers flow-matching adapter and the Bagel adapter, each built tiny and random, once per module.

Bagel's generation and understanding run here on NeMo's KV-cache inference with `varlen_attention=torch`
(the exact PyTorch stand-in for flash-attention's GPU-only varlen kernel); the flash path itself is
tested in tests/test_bagel.py only where a GPU with flash-attn exists."""

from __future__ import annotations

from functools import lru_cache

import pytest

from srum_jobs.models import adapter_contract as contract

# adapter -> (sizes, whether it has an understanding side of its own)
CASES = {
    "toy": dict(resolution=32, size=32, understands=True),
    "diffusers": dict(resolution=16, size=16, understands=False),
    "bagel": dict(resolution=32, size=32, understands=True),
}


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    @lru_cache(maxsize=None)
    def build(name: str):
        if name == "toy":
            from srum_jobs.models.base import load_model

            return load_model("toy", {"preset": "test"})
        if name == "diffusers":
            pytest.importorskip("diffusers")
            from srum_jobs.models.diffusers_flow import DiffusersFlowModel, save_random_sd3

            return DiffusersFlowModel({"device": "cpu"}, checkpoint=str(save_random_sd3(tmp_path_factory.mktemp("sd3"))))
        if name == "bagel":
            pytest.importorskip("nemo_automodel", reason="pip install --no-deps nemo-automodel==0.7.0 einops")
            from srum_jobs.models.bagel.model import BagelModel
            from srum_jobs.models.bagel.testing import save_random_bagel

            d = save_random_bagel(tmp_path_factory.mktemp("bagel"))
            return BagelModel({"device": "cpu", "varlen_attention": "torch", "max_think_tokens": "4"}, checkpoint=str(d))
        raise KeyError(name)

    return lambda name: (lambda: build(name))


@pytest.mark.parametrize("name", list(CASES))
def test_protocol(factories, name):
    contract.check_protocol(factories(name))


@pytest.mark.parametrize("name", list(CASES))
def test_generate_one_rgb_image_per_prompt_and_seed(factories, name):
    contract.check_generate(factories(name), resolution=CASES[name]["resolution"])
    contract.check_generate_think(factories(name), resolution=CASES[name]["resolution"])


@pytest.mark.parametrize("name", list(CASES))
def test_training_forward_shapes_and_determinism(factories, name):
    contract.check_training_forward(factories(name), size=CASES[name]["size"])


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_reach_trainable_parameters_only(factories, name):
    contract.check_gradients(factories(name), size=CASES[name]["size"])


@pytest.mark.parametrize("name", list(CASES))
def test_state_round_trip(factories, name):
    contract.check_state_round_trip(factories(name))


@pytest.mark.parametrize("name", list(CASES))
def test_understand(factories, name):
    if CASES[name]["understands"]:
        contract.check_understand(factories(name), size=CASES[name]["size"])
    else:
        with pytest.raises(NotImplementedError, match="understanding"):
            contract.check_understand(factories(name), size=CASES[name]["size"])


def test_the_contract_catches_a_broken_adapter(factories):
    """The checks are not vacuous: an adapter that ignores its seed, or whose target ignores the
    generator, fails them."""
    model = factories("diffusers")()

    class SeedBlind:
        name, supports_think = "broken", False

        def generate(self, prompts, seeds, **kw):
            from srum_jobs.models.base import GeneratedImage

            out = model.generate(prompts, [0] * len(seeds), **kw)   # ignores the seed, but claims to use it
            return [GeneratedImage(image=g.image, seed=s) for g, s in zip(out, seeds)]

        def training_forward(self, images, prompts, t, generator=None):
            import torch

            return model.training_forward(images, prompts, t, generator=torch.Generator().manual_seed(0))

        def __getattr__(self, item):
            return getattr(model, item)

    broken = SeedBlind()
    with pytest.raises(AssertionError, match="different seed gave the same image"):
        contract.check_generate(lambda: broken, resolution=16)
    with pytest.raises(AssertionError, match="noise does not come from the generator"):
        contract.check_training_forward(lambda: broken, size=16)
