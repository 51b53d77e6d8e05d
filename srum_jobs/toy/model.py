"""`ToyModel`: the toy world's unified model behind the `UnifiedModel` protocol (models/base.py).

- generation: FlowUNet, Euler sampling of the rectified flow from t = 1 (noise) to t = 0 with
  classifier-free guidance; each image's noise comes from its own seed, so an image depends only on
  (weights, prompt, seed, steps, guidance, mode), never on the batch it was generated in;
- think mode (plan.py): the understanding side writes a layout plan for each (prompt, seed), returned as
  the image's think text, and the generator draws conditioned on it; the unconditional branch of CFG has
  neither prompt nor plan;
- understanding: the judge side (judge.py: PerceptionNet + the symbolic reading of the prompt);
- training_forward: the flow-matching forward in pixel space. Tokens are the pixels of the 32x32 image in
  row-major order (grid (32, 32), 3 channels each), so a reward map at image resolution is already on the
  token grid. `plans` (think texts, None = plain) condition each sample on its plan.

Only the generator trains (`trainable_parameters`, `state_dict`, `load_state_dict` cover it): the
understanding side is the fixed judge of the base checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..judging.protocols import JudgeParams
from ..models.base import FlowOutput, GeneratedImage
from . import world

_KNOWN_PARAMS = ("preset", "threads", "batch_size", "planner")


class ToyModel:
    name = "toy"
    # the toy generator was pretrained with timestep shift 1 (pixel space, 32x32); training_step uses this
    # when training.timestep_shift is not set
    default_timestep_shift = 1.0
    # the share of samples pretraining gave the empty prompt (its checkpoint's p_uncond; set at load)
    default_prompt_dropout = 0.1

    def __init__(self, generator: torch.nn.Module, perception: torch.nn.Module, *, checkpoint: Optional[Path] = None,
                 batch_size: int = 64, planner: Optional[str] = None):
        from .judge import ToyUnderstanding
        from .plan import DEFAULT_PLANNER, PLANNERS

        planner = planner or DEFAULT_PLANNER
        if planner not in PLANNERS:
            raise ValueError(f"model.params.planner: {planner!r} is not a toy planner; planners are {', '.join(PLANNERS)}")
        self.planner = planner
        self.generator = generator
        self.understanding = ToyUnderstanding(perception)
        self.checkpoint = checkpoint
        self.batch_size = batch_size
        self.resolution = world.CANVAS

    @property
    def supports_think(self) -> bool:
        return bool(getattr(self.generator, "plan_channels", 0))

    # ------------------------------------------------------------------------------------ generation
    def _noise(self, seeds: Sequence[int]) -> torch.Tensor:
        out = []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s) & 0x7FFFFFFFFFFFFFFF)
            out.append(torch.randn(3, self.resolution, self.resolution, generator=g))
        return torch.stack(out)

    def _layouts(self, think_texts: Optional[Sequence[Optional[str]]], b: int) -> Optional[torch.Tensor]:
        from .plan import NO_PLAN_TEXT, layouts

        if think_texts is None or not any(t and t != NO_PLAN_TEXT for t in think_texts):
            return None
        if not self.supports_think:
            raise ValueError("this toy generator has no think mode (built without plan channels)")
        if len(think_texts) != b:
            raise ValueError(f"{b} images but {len(think_texts)} plans")
        return layouts(think_texts)

    def _guided(self, x: torch.Tensor, t: float, cond, layout: Optional[torch.Tensor], guidance: float) -> torch.Tensor:
        """The velocity at flow time t, with classifier-free guidance when `cond` holds the unconditional half
        (guidance != 1): the unconditional branch has neither prompt nor plan."""
        net, b = self.generator, x.shape[0]
        tt = torch.full((b,), float(t))
        if guidance == 1.0:
            return net(x, tt, cond, layout)
        v = net(torch.cat([x, x]), torch.cat([tt, tt]), cond,
                None if layout is None else torch.cat([layout, torch.zeros_like(layout)]))
        vc, vu = v[:b], v[b:]
        return vu + guidance * (vc - vu)

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: float, prompts: Sequence[str], plans: Optional[Sequence[Optional[str]]] = None,
                 guidance: float = 2.0) -> torch.Tensor:
        """The guided velocity the sampler follows at x (B, 3, H, W) and flow time t (eval mode, no grad)."""
        net = self.generator
        was_training = net.training
        net.eval()
        try:
            b = x.shape[0]
            cond = net.encode_text(list(prompts) + ([""] * b if guidance != 1.0 else []), x.device)
            return self._guided(x, t, cond, self._layouts(plans, b), guidance)
        finally:
            net.train(was_training)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int = 20, guidance: float = 2.0,
               plans: Optional[Sequence[Optional[str]]] = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1]: Euler steps of dx/dt = v from t = 1 to 0, CFG on the velocity.
        `plans`: think texts (None entries: plain) to condition on."""
        net = self.generator
        was_training = net.training
        net.eval()
        try:
            x = self._noise(seeds)
            b = x.shape[0]
            layout = self._layouts(plans, b)
            cond = net.encode_text(list(prompts) + ([""] * b if guidance != 1.0 else []), x.device)
            ts = torch.linspace(1.0, 0.0, steps + 1)
            for i in range(steps):
                x = x + (ts[i + 1] - ts[i]) * self._guided(x, float(ts[i]), cond, layout, guidance)
            return x.clamp(-1.0, 1.0)
        finally:
            net.train(was_training)

    def think_texts(self, prompts: Sequence[str], seeds: Sequence[int]) -> List[str]:
        """The understanding side's plan for each (prompt, seed), as think text (plan.think_text)."""
        from .plan import think_text

        return [think_text(p, s, self.planner)[0] for p, s in zip(prompts, seeds)]

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], *, think: bool = False, steps: int = 20,
                 guidance: float = 2.0, resolution: Optional[int] = None) -> List[GeneratedImage]:
        if len(prompts) != len(seeds):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        if resolution is not None and int(resolution) != self.resolution:
            raise ValueError(f"generation.resolution {resolution} is not the toy model's canvas ({self.resolution}); "
                             f"set it to {self.resolution}")
        if steps < 1:
            raise ValueError(f"generation.steps must be >= 1, got {steps}")
        if think and not self.supports_think:
            raise ValueError("generation.think: this toy generator has no think mode (built without plan channels)")
        texts: List[Optional[str]] = self.think_texts(prompts, seeds) if think else [None] * len(prompts)
        plans = texts
        out: List[GeneratedImage] = []
        for i in range(0, len(prompts), self.batch_size):
            sl = slice(i, i + self.batch_size)
            x = self.sample(prompts[sl], seeds[sl], steps, guidance, plans[sl])
            arr = ((x.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
            out += [GeneratedImage(world.to_pil(a), int(s), think_text=tt)
                    for a, s, tt in zip(arr, seeds[sl], texts[sl])]
        return out

    # --------------------------------------------------------------------------------- understanding
    def understand(self, images: Sequence[Any], instructions: Sequence[str], *, max_new_tokens: int = 256,
                   temperature: float = 0.0, think: bool = False) -> List[Tuple[str, str]]:
        replies = self.understanding.answer(images, instructions, JudgeParams(max_new_tokens=max_new_tokens,
                                                                               temperature=temperature, think=think))
        return [(r.text, r.think_text) for r in replies]

    # -------------------------------------------------------------------------------------- training
    def training_forward(self, images: torch.Tensor, prompts: Sequence[str], t: torch.Tensor,
                         generator: Optional[torch.Generator] = None,
                         plans: Optional[Sequence[Optional[str]]] = None) -> FlowOutput:
        if images.dim() != 4 or images.shape[1:] != (3, self.resolution, self.resolution):
            raise ValueError(f"training_forward: images must be (B, 3, {self.resolution}, {self.resolution}), "
                             f"got {tuple(images.shape)}")
        b = images.shape[0]
        if len(prompts) != b or t.shape != (b,):
            raise ValueError(f"training_forward: {b} images, {len(prompts)} prompts, t of shape {tuple(t.shape)}")
        x0 = images.float()
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        tt = t.to(x0.device).float()[:, None, None, None]
        xt = (1.0 - tt) * x0 + tt * eps
        layout = self._layouts(plans, b)
        v = self.generator(xt, t.to(x0.device).float(), self.generator.encode_text(list(prompts), x0.device),
                           None if layout is None else layout.to(x0.device))
        target = eps - x0
        h, w = x0.shape[2:]

        def tokens(z: torch.Tensor) -> torch.Tensor:   # (B, C, H, W) -> (B, H*W, C), row-major pixels
            return z.permute(0, 2, 3, 1).reshape(b, h * w, z.shape[1])

        return FlowOutput(v=tokens(v), target=tokens(target), grid=(int(h), int(w)))

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return self.generator.parameters()

    def state_dict(self) -> Dict[str, Any]:
        return self.generator.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> Any:
        return self.generator.load_state_dict({k: v.float() if torch.is_floating_point(v) else v
                                               for k, v in state.items()})

    def train(self, mode: bool = True) -> "ToyModel":
        self.generator.train(mode)
        return self

    def eval(self) -> "ToyModel":
        return self.train(False)

    # ------------------------------------------------------------------ analyses (evaluation/analyses.py)
    @torch.no_grad()
    def predicted_x0(self, prompts: Sequence[str], seeds: Sequence[int], *, steps: int = 20, guidance: float = 2.0,
                     at_steps: Sequence[int] = (), resolution: Optional[int] = None) -> Dict[int, List[Any]]:
        """The image the sampler predicts at sampling steps `at_steps` (1-based; step `steps` is the final
        image): x0 = x_t - t * v, with v the guided velocity of that step, read from consecutive states of
        `sample` (a forward hook records the state and time of every generator call), so this runs the very
        loop `generate` runs."""
        if resolution is not None and int(resolution) != self.resolution:
            raise ValueError(f"resolution {resolution} is not the toy model's canvas ({self.resolution})")
        bad = [k for k in at_steps if not 1 <= int(k) <= steps]
        if bad:
            raise ValueError(f"sampling steps {bad} are outside 1..{steps}")
        out: Dict[int, List[Any]] = {int(k): [] for k in at_steps}
        for i in range(0, len(prompts), self.batch_size):
            chunk, chunk_seeds = prompts[i:i + self.batch_size], seeds[i:i + self.batch_size]
            states: List[Tuple[torch.Tensor, float]] = []
            seen_t: set = set()

            def record(module, args, output, b=len(chunk)):
                t = float(args[1][0])
                if t not in seen_t:                  # one state per step (guidance may call twice)
                    seen_t.add(t)
                    states.append((args[0][:b].detach().clone(), t))

            handle = self.generator.register_forward_hook(record)
            try:
                final = self.sample(chunk, chunk_seeds, steps, guidance)
            finally:
                handle.remove()
            xs = [x for x, _ in states] + [final]
            ts = [t for _, t in states] + [0.0]
            for k in out:
                j = k - 1
                v = (xs[j + 1] - xs[j]) / (ts[j + 1] - ts[j])
                x0 = (xs[j] - ts[j] * v).clamp(-1.0, 1.0)
                arr = ((x0.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
                out[k] += [world.to_pil(a) for a in arr]
        return out


def load_toy_model(params: Optional[Mapping[str, Any]] = None, checkpoint: Optional[str] = None) -> ToyModel:
    """The registry factory (models/base.py MODEL_ADAPTERS["toy"]).

    params: `preset` (test | demo, default demo: which base model ensure_base builds or finds),
    `threads` (torch CPU threads), `batch_size` (generation batch). checkpoint: a toy checkpoint directory
    (local path or file://) to load instead of the preset's base."""
    from .pretrain import PRESETS, ensure_base, load_generator, load_perception, read_meta

    params = dict(params or {})
    unknown = sorted(set(params) - set(_KNOWN_PARAMS))
    if unknown:
        raise ValueError(f"model.params: unknown key(s) {unknown} for the toy model; known: {', '.join(_KNOWN_PARAMS)}")
    if params.get("threads") is not None:
        torch.set_num_threads(max(1, int(params["threads"])))
    if checkpoint:
        if str(checkpoint).startswith("s3://"):
            raise ValueError(f"model.checkpoint {checkpoint}: the toy model loads local checkpoint directories only")
        d = Path(str(checkpoint).removeprefix("file://"))
        if not (d / "generator.pt").is_file():
            raise ValueError(f"model.checkpoint {d} is not a toy checkpoint directory (no generator.pt)")
    else:
        preset = str(params.get("preset", "demo"))
        if preset not in PRESETS:
            raise ValueError(f"model.params.preset {preset!r} is not one of {sorted(PRESETS)}")
        d = ensure_base(preset)
    batch = int(params.get("batch_size", 64))
    if batch < 1:
        raise ValueError(f"model.params.batch_size must be >= 1, got {batch}")
    model = ToyModel(load_generator(d), load_perception(d), checkpoint=d, batch_size=batch,
                     planner=params.get("planner"))
    model.default_prompt_dropout = float(read_meta(d)["config"]["generator"].get("p_uncond", 0.0))
    model.generator.train()
    return model
