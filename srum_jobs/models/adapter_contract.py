"""The contract every `UnifiedModel` adapter keeps, as reusable checks (models/base.py states it).

Each check takes a zero-argument factory returning the adapter (tests pass one that builds a tiny model
once and returns it), runs the adapter through its protocol only, and raises AssertionError naming what
broke. The checks are plain functions, not tests, so an adapter's own test file (or a GPU smoke script)
can run exactly the same contract on any size of model.

    generate:          one RGB image per (prompt, seed) at the asked resolution; the same seed gives the
                       same image, also when the pair sits in a different batch; another seed differs
    training_forward:  v and target (B, N, C), N == gh * gw, finite; the same generator state gives the
                       same target; a loss on v sends finite gradients into the trainable parameters,
                       and into no frozen one
    state:             state_dict -> load_state_dict restores trained weights exactly
    understand:        one (answer, think) pair of strings per request
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import torch

from .base import FlowOutput, GeneratedImage, UnifiedModel

Factory = Callable[[], Any]


def _pixels(g: GeneratedImage) -> np.ndarray:
    return np.asarray(g.image)


def check_protocol(factory: Factory) -> None:
    model = factory()
    assert isinstance(model, UnifiedModel), f"{type(model).__name__} does not implement UnifiedModel"
    assert isinstance(model.name, str) and model.name, "an adapter has a non-empty name"
    assert isinstance(model.supports_think, bool)


def check_generate(factory: Factory, *, resolution: int, steps: int = 2, guidance: float = 2.0,
                   prompts: Sequence[str] = ("a red cube left of a blue ball", "two green cats")) -> List[GeneratedImage]:
    model = factory()
    p0, p1 = prompts[0], prompts[1]
    out = model.generate([p0, p1, p0, p0], [11, 11, 11, 12], steps=steps, guidance=guidance, resolution=resolution)
    assert isinstance(out, list) and len(out) == 4, f"generate returned {len(out)} images for 4 (prompt, seed) pairs"
    for g, seed in zip(out, [11, 11, 11, 12]):
        assert isinstance(g, GeneratedImage), f"generate returned {type(g).__name__}, not GeneratedImage"
        assert g.seed == seed, f"image carries seed {g.seed}, asked {seed}"
        assert getattr(g.image, "mode", None) == "RGB", f"image mode {getattr(g.image, 'mode', None)}, not RGB"
        assert g.image.size == (resolution, resolution), f"image size {g.image.size}, asked {resolution}"
    assert np.array_equal(_pixels(out[0]), _pixels(out[2])), "same prompt and seed gave different images in one batch"
    assert not np.array_equal(_pixels(out[0]), _pixels(out[3])), "a different seed gave the same image"
    alone = model.generate([p0], [11], steps=steps, guidance=guidance, resolution=resolution)
    assert np.array_equal(_pixels(alone[0]), _pixels(out[0])), "the same (prompt, seed) changed with its batch"
    return out


def check_generate_think(factory: Factory, *, resolution: int, steps: int = 2) -> None:
    model = factory()
    if not model.supports_think:
        return
    out = model.generate(["a red cube"], [3], think=True, steps=steps, resolution=resolution)
    assert len(out) == 1 and isinstance(out[0].think_text, str), "think mode returns the think text as a string"


def check_training_forward(factory: Factory, *, batch: int = 2, size: int = 32,
                           prompts: Optional[Sequence[str]] = None) -> FlowOutput:
    model = factory()
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size) * 2 - 1
    prompts = list(prompts or [f"prompt {i}" for i in range(batch)])
    t = torch.linspace(0.2, 0.8, batch)
    out = model.training_forward(images, prompts, t, generator=torch.Generator().manual_seed(5))
    assert isinstance(out, FlowOutput), f"training_forward returned {type(out).__name__}"
    assert out.v.dim() == 3 and out.v.shape == out.target.shape, \
        f"v {tuple(out.v.shape)} and target {tuple(out.target.shape)} must both be (B, N, C)"
    b, n, c = out.v.shape
    gh, gw = out.grid
    assert b == batch and n == gh * gw, f"{n} tokens for a {gh}x{gw} grid (batch {b}, asked {batch})"
    if out.token_mask is not None:
        assert tuple(out.token_mask.shape) == (b, n) and out.token_mask.dtype == torch.bool
    assert torch.isfinite(out.v.float()).all() and torch.isfinite(out.target.float()).all(), "non-finite v/target"
    again = model.training_forward(images, prompts, t, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.target, out.target), "the same generator state gave a different target"
    other = model.training_forward(images, prompts, t, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(other.target, out.target), "the noise does not come from the generator"
    return out


def check_gradients(factory: Factory, *, batch: int = 2, size: int = 32) -> None:
    model = factory()
    trainable = [p for p in model.trainable_parameters() if p.requires_grad]
    assert trainable, "the adapter exposes no trainable parameters"
    ids = {id(p) for p in trainable}
    for p in trainable:
        p.grad = None
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = model.training_forward(images, [f"p{i}" for i in range(batch)], torch.full((batch,), 0.5),
                                 generator=torch.Generator().manual_seed(2))
    (out.v.float() - out.target.float()).pow(2).mean().backward()
    grads = [p.grad for p in trainable]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached a trainable parameter"
    assert all(g is None or torch.isfinite(g).all() for g in grads), "a gradient is not finite"
    modules = [m for m in vars(model).values() if isinstance(m, torch.nn.Module)]
    frozen = [p for m in modules for p in m.parameters() if id(p) not in ids]
    assert all(p.grad is None for p in frozen), "a frozen parameter received a gradient"
    for p in trainable:
        p.grad = None


def check_state_round_trip(factory: Factory) -> None:
    model = factory()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert state, "state_dict is empty"
    trainable = [p for p in model.trainable_parameters() if p.requires_grad]
    with torch.no_grad():
        saved = [p.detach().clone() for p in trainable]
        for p in trainable:
            p.add_(1.0)
    model.load_state_dict(state)
    assert all(torch.equal(p, s) for p, s in zip(trainable, saved)), "load_state_dict did not restore the weights"


def check_understand(factory: Factory, *, size: int = 32, max_new_tokens: int = 8,
                     instructions: Optional[Sequence[str]] = None) -> None:
    """`instructions` default to the project's own judge templates (global and sample kinds), the text a
    model's understanding side receives when it judges."""
    from PIL import Image

    model = factory()
    if instructions is None:
        from ..judging.templates import load_templates

        tpl = load_templates()
        instructions = [tpl.render_global("a red cube left of a blue ball", size, size),
                        tpl.render_sample("two green cats", size, size)]
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8))
              for i in range(len(instructions))]
    out = model.understand(images, list(instructions), max_new_tokens=max_new_tokens)
    assert isinstance(out, list) and len(out) == len(instructions), "understand returns one reply per request"
    for reply in out:
        assert isinstance(reply, tuple) and len(reply) == 2 and all(isinstance(s, str) for s in reply), \
            f"a reply is {reply!r}, not (answer, think text)"
