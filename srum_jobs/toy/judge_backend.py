"""`ToyJudgeBackend` (JudgeBackend of judging/protocols.py): the toy model's understanding side
(judge.py) over the base weights of a preset (pretrain.py) or a checkpoint. Apart from judge.py, so that
pretraining, which checks its weights through ToyUnderstanding, does not import back the module that
loads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

from ..judging.protocols import JudgeParams, JudgeReply
from .judge import ToyUnderstanding

_KNOWN_PARAMS = ("preset", "checkpoint", "threads")


class ToyJudgeBackend:
    """JudgeBackend serving the toy model's understanding side. Params (strings, as Triton passes them):
      preset      base checkpoint preset, `test` or `demo` (default demo), built by ensure_base if missing;
      checkpoint  a toy checkpoint directory instead of the preset's;
      threads     torch CPU threads for this backend (default: leave torch's setting).
    Deterministic: temperature is accepted and ignored; max_new_tokens truncates the answer; think mode
    returns what the judge saw as think text."""

    name = "toy"

    def __init__(self, params: Optional[Mapping[str, Any]] = None):
        import torch

        from .pretrain import PRESETS, ensure_base, load_perception

        params = dict(params or {})
        unknown = sorted(set(params) - set(_KNOWN_PARAMS))
        if unknown:
            raise ValueError(f"toy judge: unknown parameter(s) {unknown}; known: {', '.join(_KNOWN_PARAMS)}")
        if params.get("threads"):
            try:
                torch.set_num_threads(max(1, int(params["threads"])))
            except ValueError:
                raise ValueError(f"toy judge: threads={params['threads']!r} is not an integer") from None
        if params.get("checkpoint"):
            d = Path(str(params["checkpoint"]).removeprefix("file://"))
            if not (d / "perception.pt").is_file():
                raise ValueError(f"toy judge: checkpoint {d} has no perception.pt")
        else:
            preset = str(params.get("preset") or "demo")
            if preset not in PRESETS:
                raise ValueError(f"toy judge: preset={preset!r} is not one of {sorted(PRESETS)}")
            d = ensure_base(preset)
        self.checkpoint = d
        self.understanding = ToyUnderstanding(load_perception(d))

    def generate(self, images: Sequence[Any], instructions: Sequence[str], params: JudgeParams) -> List[JudgeReply]:
        return self.understanding.answer(images, instructions, params)
