"""The `diffusers` model adapter: a flow-matching diffusion transformer (Stable Diffusion 3 class) with its
VAE, a frozen text encoder and diffusers' flow-matching Euler scheduler, trained with the SRUM loss.

The model directory has diffusers' layout (any SD3 / SD3.5 checkpoint directory works, or a
"frozen-VLM + diffusion transformer" setup written in the same layout):

    transformer/   SD3Transformer2DModel  (the trained part)
    vae/           AutoencoderKL          (frozen)
    scheduler/     FlowMatchEulerDiscreteScheduler
    text_encoder/  any transformers text model; its last hidden state conditions the transformer and its
                   pooled output (`text_embeds`, `pooler_output`, or the masked mean) is the pooled vector
    tokenizer/     the text encoder's tokenizer

SD3's three text encoders are not required: one encoder whose widths match the transformer's
`joint_attention_dim` and `pooled_projection_dim` is enough. Conventions are the project's
(models/base.py): x_t = (1 - t) x0 + t eps, target eps - x0, which is exactly SD3's sigma convention, so
the transformer's output is the velocity the SRUM loss weights. Tokens are the transformer's p x p
latent patches in row-major order over the (H / (8 p), W / (8 p)) grid for an 8x VAE.

`understand` has no model of its own: with `understanding_model_path` (a transformers VLM directory)
it answers through the `hf` judge backend; without it, it raises.

Parameters: model_path (or the `checkpoint` argument), device, dtype (default float32 master weights;
bf16 autocast comes from training.bf16), max_text_tokens (77), text_dropout (0.0, probability of
training a sample unconditioned), understanding_model_path, plus `understanding_*` keys passed on to the
hf backend (e.g. understanding_max_batch_size).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from .base import FlowOutput, GeneratedImage
from .common import ParamError, Params, local_weights, resolve_device, resolve_dtype

WHAT = "diffusers model adapter"


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)(W/p), C p p): row-major over the patch grid, channels then the p x p cell."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class DiffusersFlowModel:
    """UnifiedModel (models/base.py) over an SD3-class diffusers transformer."""

    name = "diffusers"
    supports_think = False

    def __init__(self, params: Optional[Mapping[str, Any]] = None, checkpoint: Optional[str] = None):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import AutoTokenizer

        import transformers

        p = Params(params, WHAT)
        location = checkpoint or p.str("model_path")
        if not location:
            raise ParamError(f"{WHAT}: give the model directory as model.checkpoint or parameter 'model_path'")
        root = local_weights(location, WHAT)
        for sub in ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"):
            if not (root / sub).is_dir():
                raise ParamError(f"{WHAT}: {root} has no {sub}/ folder (diffusers layout expected)")
        self.root = root
        self.device = resolve_device(p.str("device"), WHAT)
        self.dtype = resolve_dtype(p.str("dtype", "float32"), self.device, WHAT)
        self.max_text_tokens = p.int("max_text_tokens", 77, min=1)
        self.text_dropout = p.float("text_dropout", 0.0, min=0.0, max=1.0)
        und_path = p.str("understanding_model_path")
        und_params = {k[len("understanding_"):]: p.str(k) for k in list(p.raw) if k.startswith("understanding_")
                      and k != "understanding_model_path"}
        p.check_unused()

        kw = dict(local_files_only=True)
        self.transformer = SD3Transformer2DModel.from_pretrained(str(root / "transformer"), torch_dtype=self.dtype, **kw)
        self.vae = AutoencoderKL.from_pretrained(str(root / "vae"), torch_dtype=self.dtype, **kw)
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(root / "scheduler"), **kw)
        arch = (json.loads((root / "text_encoder" / "config.json").read_text()).get("architectures") or ["AutoModel"])[0]
        encoder_cls = getattr(transformers, arch, None)
        if encoder_cls is None:
            raise ParamError(f"{WHAT}: text_encoder architecture {arch!r} is not a transformers class")
        self.text_encoder = encoder_cls.from_pretrained(str(root / "text_encoder"), dtype=self.dtype, **kw)
        self.tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), **kw)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        for m in (self.transformer, self.vae, self.text_encoder):
            m.to(self.device)
        # Only the diffusion transformer learns; the VAE and the text encoder stay frozen (and in eval mode).
        self.vae.requires_grad_(False).eval()
        self.text_encoder.requires_grad_(False).eval()
        self.transformer.train()

        tc = self.transformer.config
        self.patch = int(tc.patch_size)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = int(tc.in_channels)
        if int(self.vae.config.latent_channels) != self.latent_channels:
            raise ParamError(f"{WHAT}: vae latent_channels {self.vae.config.latent_channels} != transformer "
                             f"in_channels {self.latent_channels}")
        self.scaling = float(self.vae.config.scaling_factor)
        self.shift = float(self.vae.config.shift_factor or 0.0)
        hidden = int(getattr(self.text_encoder.config, "hidden_size", getattr(self.text_encoder.config, "d_model", 0)))
        if hidden != int(tc.joint_attention_dim):
            raise ParamError(f"{WHAT}: text encoder width {hidden} != transformer joint_attention_dim {tc.joint_attention_dim}")
        self.default_resolution = int(tc.sample_size) * self.vae_scale
        self._understanding = None
        if und_path:
            from .hf_judge import HFJudgeBackend

            self._understanding = HFJudgeBackend({"model_path": und_path, "device": str(self.device), **und_params})

    # ------------------------------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, L, joint_attention_dim), pooled (B, pooled_projection_dim)) from the frozen encoder."""
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_text_tokens,
                             return_tensors="pt").to(self.device)
        out = self.text_encoder(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"))
        hidden = out.last_hidden_state
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        want = int(self.transformer.config.pooled_projection_dim)
        if pooled.shape[-1] != want:
            raise ParamError(f"{WHAT}: pooled text width {pooled.shape[-1]} != transformer pooled_projection_dim {want}")
        return hidden.to(self.dtype), pooled.to(self.dtype)

    # ------------------------------------------------------------------------------------ generation
    def _check_resolution(self, resolution: int) -> int:
        step = self.vae_scale * self.patch
        if resolution < step or resolution % step:
            raise ValueError(f"{WHAT}: resolution {resolution} must be a positive multiple of {step} "
                             f"(VAE factor {self.vae_scale} x patch {self.patch})")
        return resolution

    def _scheduler(self, steps: int, n_tokens: int) -> Any:
        sched = type(self.scheduler).from_config(self.scheduler.config)   # fresh step counter per call
        mu = None
        if sched.config.use_dynamic_shifting:
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            c = sched.config
            mu = calculate_shift(n_tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
        sched.set_timesteps(steps, device=self.device, mu=mu)
        return sched

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int], *, think: bool = False, steps: int = 20,
                 guidance: float = 2.0, resolution: Optional[int] = None) -> List[GeneratedImage]:
        if think:
            raise ValueError(f"{WHAT}: this model has no think mode (supports_think is False)")
        if len(prompts) != len(seeds):
            raise ValueError(f"{WHAT}: {len(prompts)} prompts but {len(seeds)} seeds")
        if steps < 1:
            raise ValueError(f"{WHAT}: steps must be >= 1, got {steps}")
        if not prompts:
            return []
        res = self._check_resolution(int(resolution or self.default_resolution))
        lh = lw = res // self.vae_scale
        # One CPU generator per seed: the same (prompt, seed) gives the same image in any batch, on any device.
        noise = torch.stack([torch.randn(self.latent_channels, lh, lw, generator=torch.Generator().manual_seed(int(s)))
                             for s in seeds]).to(self.device, self.dtype)
        cond, pooled = self.encode_text(prompts)
        use_cfg = guidance > 1.0
        if use_cfg:
            uncond, upooled = self.encode_text([""] * len(prompts))
            cond, pooled = torch.cat([uncond, cond]), torch.cat([upooled, pooled])
        was_training = self.transformer.training
        self.transformer.eval()
        try:
            sched = self._scheduler(steps, (lh // self.patch) * (lw // self.patch))
            x = noise
            for t in sched.timesteps:
                inp = torch.cat([x, x]) if use_cfg else x
                v = self.transformer(hidden_states=inp, encoder_hidden_states=cond, pooled_projections=pooled,
                                     timestep=t.expand(inp.shape[0]).to(self.dtype), return_dict=False)[0]
                if use_cfg:
                    v_u, v_c = v.chunk(2)
                    v = v_u + guidance * (v_c - v_u)
                x = sched.step(v, t, x, return_dict=False)[0]
            images = self._decode(x)
        finally:
            self.transformer.train(was_training)
        return [GeneratedImage(image=img, seed=int(s)) for img, s in zip(images, seeds)]

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> List[Any]:
        from PIL import Image

        pixels = self.vae.decode(latents / self.scaling + self.shift, return_dict=False)[0]
        arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]

    @torch.no_grad()
    def predicted_x0(self, prompts: Sequence[str], seeds: Sequence[int], *, steps: int = 20, guidance: float = 2.0,
                     at_steps: Sequence[int] = (), resolution: Optional[int] = None) -> Dict[int, List[Any]]:
        """The image the sampler predicts at sampling steps `at_steps` (1-based; step `steps` is the generated
        image): x0 = x_t - sigma_t v, with v the step's guided velocity read from consecutive latents of the
        `generate` loop (a forward hook records the transformer's input latents and timesteps), decoded."""
        bad = [k for k in at_steps if not 1 <= int(k) <= steps]
        if bad:
            raise ValueError(f"{WHAT}: sampling steps {bad} are outside 1..{steps}")
        states: List[Tuple[torch.Tensor, float]] = []
        b = len(prompts)

        def record(module, args, kwargs, output):
            states.append((kwargs["hidden_states"][:b].detach().clone(), float(kwargs["timestep"].reshape(-1)[0])))

        handle = self.transformer.register_forward_hook(record, with_kwargs=True)
        try:
            final = self.generate(prompts, seeds, steps=steps, guidance=guidance, resolution=resolution)
        finally:
            handle.remove()
        n_train = float(self.scheduler.config.num_train_timesteps)
        out: Dict[int, List[Any]] = {}
        for k in sorted({int(k) for k in at_steps}):
            if k == steps:
                out[k] = [g.image for g in final]
                continue
            (x_k, t_k), (x_n, t_n) = states[k - 1], states[k]
            s_k, s_n = t_k / n_train, t_n / n_train
            x0 = x_k - s_k * (x_n - x_k) / (s_n - s_k)
            out[k] = self._decode(x0.to(self.dtype))
        return out

    def understand(self, images: Sequence[Any], instructions: Sequence[str], *, max_new_tokens: int = 256,
                   temperature: float = 0.0, think: bool = False) -> List[Tuple[str, str]]:
        from ..judging.protocols import JudgeParams

        if self._understanding is None:
            raise NotImplementedError(f"{WHAT}: a diffusion transformer has no understanding side; set parameter "
                                      "'understanding_model_path' to a transformers VLM directory")
        replies = self._understanding.generate(images, instructions, JudgeParams(max_new_tokens=max_new_tokens,
                                                                                 temperature=temperature, think=think))
        return [(r.text, r.think_text) for r in replies]

    # -------------------------------------------------------------------------------------- training
    def training_forward(self, images: torch.Tensor, prompts: Sequence[str], t: torch.Tensor,
                         generator: Optional[torch.Generator] = None) -> FlowOutput:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{WHAT}: images must be (B, 3, H, W), got {tuple(images.shape)}")
        b, _, h, w = images.shape
        if len(prompts) != b or tuple(t.shape) != (b,):
            raise ValueError(f"{WHAT}: {b} images, {len(prompts)} prompts, t of shape {tuple(t.shape)}")
        if h != w:
            self._check_resolution(w)
        self._check_resolution(h)
        images = images.to(self.device, self.dtype)
        with torch.no_grad():
            # The posterior mean: the same image always trains on the same latent.
            x0 = (self.vae.encode(images).latent_dist.mean - self.shift) * self.scaling
            prompts = list(prompts)
            if self.text_dropout > 0:
                drop = torch.rand(b, generator=generator) < self.text_dropout
                prompts = ["" if d else s for s, d in zip(prompts, drop.tolist())]
            cond, pooled = self.encode_text(prompts)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(self.device, x0.dtype)
        tt = t.to(self.device, x0.dtype).view(b, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * eps
        # SD3's timestep is sigma * num_train_timesteps (sigma = our t)
        timestep = t.to(self.device, x0.dtype) * float(self.scheduler.config.num_train_timesteps)
        v = self.transformer(hidden_states=x_t, encoder_hidden_states=cond, pooled_projections=pooled,
                             timestep=timestep, return_dict=False)[0]
        p = self.patch
        return FlowOutput(v=patchify(v, p), target=patchify(eps - x0, p), grid=(x0.shape[2] // p, x0.shape[3] // p))

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [q for q in self.transformer.parameters() if q.requires_grad]

    def state_dict(self) -> Dict[str, Any]:
        """The trained part only (the transformer); the frozen VAE and text encoder come from model_path."""
        return {k: v.detach().clone() for k, v in self.transformer.state_dict().items()}

    def load_state_dict(self, state: Dict[str, Any]) -> Any:
        return self.transformer.load_state_dict(state, strict=True)


def load_diffusers_model(params: Optional[Mapping[str, Any]] = None, checkpoint: Optional[str] = None) -> DiffusersFlowModel:
    """Registry factory (models/base.py MODEL_ADAPTERS['diffusers'])."""
    return DiffusersFlowModel(params, checkpoint)


# ---------------------------------------------------------------------------------------------------
# A randomly initialised tiny SD3-class model in diffusers layout (tests, CPU smoke runs; never a hub)
# ---------------------------------------------------------------------------------------------------
def save_random_sd3(path: str | Path, *, seed: int = 0, sample_size: int = 8, layers: int = 1, text_width: int = 32,
                    pooled_width: int = 16) -> Path:
    """Write a tiny random SD3 transformer (2 heads of 8), a 2x VAE, a 1-layer CLIP text encoder with a
    locally trained tokenizer, and a flow-matching scheduler (shift 3.0, SD3's) to `path`.

    The default generates and trains at 16x16 pixels (8x8 latents, 4x4 tokens of 2x2 patches)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

    from .common import train_tiny_tokenizer

    path = Path(path)
    torch.manual_seed(seed)
    specials = ["<pad>", "<bos>", "<eos>"]
    raw = train_tiny_tokenizer(specials)
    raw.post_processor = TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    tok.save_pretrained(str(path / "tokenizer"))
    CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=1,
        num_attention_heads=2, projection_dim=pooled_width, max_position_embeddings=77, pad_token_id=0,
        bos_token_id=1, eos_token_id=2)).save_pretrained(str(path / "text_encoder"))
    SD3Transformer2DModel(sample_size=sample_size, patch_size=2, in_channels=4, num_layers=layers,
                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=text_width,
                          caption_projection_dim=16, pooled_projection_dim=pooled_width, out_channels=4,
                          pos_embed_max_size=max(16, sample_size)).save_pretrained(str(path / "transformer"))
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=2 * sample_size, scaling_factor=1.5,
                  shift_factor=0.1).save_pretrained(str(path / "vae"))
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(str(path / "scheduler"))
    return path
