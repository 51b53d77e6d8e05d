"""The two swappable parts of judging, as small protocols.

- a *backend* runs a model in-process (inside a Triton python-backend model, or directly in tests and benches);
- a *transport* is how the judging pipeline reaches backends: over Triton gRPC (the product) or in-process.

The judging pipeline only ever talks to a `JudgeTransport`, so the same code judges through a shared
Triton server on a cluster and in-process inside `srum bench toy`.

Instruction contract (every template renders it; the toy understanding model and real VLMs read the same text):
  a line `Prompt: <the generation prompt>`;
  for region kinds, one line per region `Region <i>: box [x0, y0, x1, y1]` (pixel xyxy, integers);
  the output format the judge must answer in (`Score:` / `Reason:` lines, region blocks, `Answer:` for verify).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class JudgeParams:
    max_new_tokens: int = 256
    temperature: float = 0.0
    think: bool = False


@dataclass(frozen=True)
class JudgeReply:
    text: str                      # the answer, think text removed
    think_text: str = ""           # what the model thought first (empty when not in think mode)


@dataclass(frozen=True)
class BoxOptions:
    points_per_side: int = 16
    max_regions: int = 16
    min_area: float = 0.0          # fraction of the image area


@dataclass(frozen=True)
class BoxProposal:
    boxes: np.ndarray              # (N, 4) float32 pixel xyxy, sorted by area, largest first
    areas: np.ndarray              # (N,) float32 pixel areas
    confidence: np.ndarray         # (N,) float32 in [0, 1]


@runtime_checkable
class JudgeBackend(Protocol):
    """image + instruction text -> text. Batched: one call may carry many requests."""

    def generate(self, images: Sequence["object"], instructions: Sequence[str], params: JudgeParams) -> List[JudgeReply]:
        ...


@runtime_checkable
class BoxerBackend(Protocol):
    def propose(self, images: Sequence["object"], options: BoxOptions) -> List[BoxProposal]:
        ...


@runtime_checkable
class JudgeTransport(Protocol):
    """What the judging pipeline calls. Images travel as encoded PNG bytes (that is what crosses gRPC)."""

    async def judge(self, image_png: bytes, instruction: str, params: JudgeParams) -> JudgeReply:
        ...

    async def propose_boxes(self, image_png: bytes, options: BoxOptions) -> BoxProposal:
        ...

    def identity(self) -> Dict[str, str]:
        """model name/version pairs, for the judgment cache key and the records."""
        ...
