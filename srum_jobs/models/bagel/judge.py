"""The `bagel` judge backend: Bagel's understanding side, batched."""

from __future__ import annotations

from typing import Any, List, Mapping, Sequence

from ...judging.protocols import JudgeParams, JudgeReply
from ..common import ParamError, Params
from .model import BagelModel


class BagelJudgeBackend:
    """The `bagel` judge backend (JudgeBackend): Bagel's understanding side as the judge, batched.

    Parameters: those of the adapter (model_path, device, dtype, varlen_attention, vit_*), plus
    max_batch_size (requests per packed batch, default 8)."""

    def __init__(self, params: Mapping[str, Any]):
        raw = dict(params or {})
        p = Params({"max_batch_size": raw.pop("max_batch_size", None)}, "bagel judge backend")
        self.max_batch_size = p.int("max_batch_size", 8, min=1)
        raw.setdefault("text_dropout", "0")
        self.model = BagelModel(raw, for_training=False)

    def generate(self, images: Sequence[Any], instructions: Sequence[str], params: JudgeParams) -> List[JudgeReply]:
        if len(images) != len(instructions):
            raise ParamError(f"bagel judge backend: {len(images)} images but {len(instructions)} instructions")
        replies: List[JudgeReply] = []
        for s in range(0, len(images), self.max_batch_size):
            for answer, think in self.model.understand(images[s:s + self.max_batch_size],
                                                       instructions[s:s + self.max_batch_size],
                                                       max_new_tokens=params.max_new_tokens,
                                                       temperature=params.temperature, think=params.think):
                replies.append(JudgeReply(text=answer, think_text=think))
        return replies

    def close(self) -> None:
        self.model = None
