"""The `UnifiedModel` protocol: what every model adapter (toy, bagel, diffusers) provides.

Training never forks a model's code: `training_forward` returns the per-token velocity prediction, its
target and each token's place on the latent grid, and the SRUM loss (training/loss.py) weights it with
the reward map pooled to that grid (rewards.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch

from .. import registry


@dataclass
class GeneratedImage:
    image: Any                     # PIL.Image.Image, RGB
    seed: int
    think_text: Optional[str] = None


@dataclass
class FlowOutput:
    """One training forward on a batch of B images, N latent tokens of C channels each."""

    v: torch.Tensor                # (B, N, C) predicted velocity
    target: torch.Tensor           # (B, N, C) rectified-flow target eps - x0
    grid: Tuple[int, int]          # (gh, gw): N == gh * gw, tokens in row-major order over the latent grid
    token_mask: Optional[torch.Tensor] = None   # (B, N) bool, False for padding tokens (packed sequences)


@runtime_checkable
class UnifiedModel(Protocol):
    name: str
    supports_think: bool

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], *, think: bool = False, steps: int = 20,
                 guidance: float = 2.0, resolution: Optional[int] = None) -> List[GeneratedImage]:
        """One image per (prompt, seed); the same seed gives the same image."""

    def understand(self, images: Sequence[Any], instructions: Sequence[str], *, max_new_tokens: int = 256,
                   temperature: float = 0.0, think: bool = False) -> List[Tuple[str, str]]:
        """(answer text, think text) per request: the judge side of the model."""

    def training_forward(self, images: torch.Tensor, prompts: Sequence[str], t: torch.Tensor,
                         generator: Optional[torch.Generator] = None) -> FlowOutput:
        """images (B, 3, H, W) in [-1, 1]; t (B,) flow time in (0, 1): x_t = (1 - t) x0 + t eps."""

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        ...

    def state_dict(self) -> Dict[str, Any]:
        ...

    def load_state_dict(self, state: Dict[str, Any]) -> Any:
        ...


@runtime_checkable
class PerStepModel(Protocol):
    """Optional, for the per-step analysis (evaluation/analyses.py, the paper's Fig. 4)."""

    def predicted_x0(self, prompts: Sequence[str], seeds: Sequence[int], *, steps: int = 20, guidance: float = 2.0,
                     at_steps: Sequence[int] = (), resolution: Optional[int] = None) -> Dict[int, List[Any]]:
        """{step: images}: what the sampler predicts as the final image (x0 = x_t - t v) at each of
        `at_steps` (1-based; step `steps` is the generated image), with the same seeds as `generate`."""


@runtime_checkable
class ActivationModel(Protocol):
    """Optional, for the functional-cluster analysis (evaluation/analyses.py, the paper's Appendix B):
    the layers whose output channels are the units. Without it, every Linear/Conv layer reachable from
    the adapter's attributes is used."""

    def activation_modules(self) -> Dict[str, torch.nn.Module]:
        ...


def pixels_from_images(images: Sequence[Any]) -> torch.Tensor:
    """RGB images (PIL or HxWx3 uint8 arrays) as the (B, 3, H, W) float tensor in [-1, 1] that
    `training_forward` takes."""
    import numpy as np

    arr = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.float32)
                    for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def load_model(adapter: str, params: Dict[str, Any], checkpoint: Optional[str] = None) -> UnifiedModel:
    adapters = registry.MODEL_ADAPTERS
    if adapter not in adapters:
        raise ValueError(f"model.adapter {adapter!r} is not one of {sorted(adapters)}")
    return adapters.load(adapter)(params=params, checkpoint=checkpoint)
