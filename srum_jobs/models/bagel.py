"""The `bagel` model adapter and judge backend: BAGEL (ByteDance-Seed's unified model, e.g. BAGEL-7B-MoT)
through NVIDIA NeMo AutoModel's implementation (`nemo_automodel.components.models.bagel`).

How Bagel's code is obtained: it is not on PyPI and the official modelling code imports flash-attention
unconditionally, so this adapter uses NeMo AutoModel's maintained port, installed pinned and without its
dependency tree (which would replace this project's transformers):

    pip install --no-deps nemo-automodel==0.7.0 einops

Nothing of Bagel or NeMo is copied here: the model, its packed-sequence attention, the KV cache, the
VAE, the state-dict filtering and the packing helpers (attention masks, latent position ids, patchify)
are imported from NeMo. This module only *drives* them:

* `training_forward` builds Bagel's text-to-image training pack (per sample: `<|im_start|> prompt
  <|im_end|>` as a causal split, then `<|vision_start|> latent tokens <|vision_end|>` as a noise split),
  runs NeMo's unmodified `BagelForUnifiedMultimodal.forward` on its dense-mask path, and exposes the
  per-token velocity (captured at `llm2vae`), its target and the latent grid as a FlowOutput. NeMo draws
  the flow noise inside its forward; the adapter seeds that draw from the caller's generator, replays it
  to form the target, and checks the result against the per-token MSE NeMo returns, so a change in
  NeMo's forward fails loudly instead of training on a wrong target.
* `generate` (think and no-think) and `understand` drive NeMo's KV-cache inference (`forward_inference`
  in und / gen mode, `NaiveCache`) with a packed batch, classifier-free guidance on the text, and an Euler
  flow sampler; `BagelJudgeBackend` serves `understand` as the `bagel` judge backend.

Device notes (measured with NeMo AutoModel 0.7.0, torch 2.14): the training path runs on CPU and GPU
(bf16 autocast; on CPU the SDPA kernel restriction to memory-efficient attention, which has no CPU
kernel, is lifted for the duration of the call). NeMo's inference and ViT paths call flash-attention's
varlen kernel (GPU only); `varlen_attention=torch` swaps in an exact but slow PyTorch equivalent for
CPU runs and tests.

Checkpoint directory (local, file:// or s3://; never a hub): the released layout (`llm_config.json`,
`vit_config.json`, `ema.safetensors`, `ae.safetensors`, Qwen2 tokenizer files) or a BagelConfig
`config.json` with `ema.safetensors` or sharded `*.safetensors` + index; `ae_config.json` optionally
overrides the VAE architecture (random test models).

Parameters: model_path (or model.checkpoint), device, dtype (auto: bf16 on GPU, fp32 master weights on
CPU), trainable (gen: the generation expert and flow head, the paper's recipe | all), text_dropout
(probability a training sample drops its prompt, default 0.1 as in Bagel's training), varlen_attention
(flash_attn | torch | auto), timestep_shift (sampling, default 3.0), cfg_interval ("0.4,1.0"),
cfg_renorm (global | none), cfg_renorm_min (0.0), default_resolution (1024), max_think_tokens (512),
vit_max_image_size, vit_min_image_size, activation_checkpointing (false), fsdp (off | full | hybrid),
fsdp_replicas (hybrid: number of replica groups, default = number of nodes).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from ..judging.protocols import JudgeParams, JudgeReply
from .base import FlowOutput, GeneratedImage
from .common import ParamError, Params, load_safetensors_dir, local_weights, resolve_device, resolve_dtype, split_think

WHAT = "bagel model adapter"
INSTALL_HINT = "pip install --no-deps nemo-automodel==0.7.0 einops"

# Written for this project (not Bagel's wording): asks the model to plan inside think tags first.
THINK_SYSTEM_PROMPT = ("Think before you answer: write your reasoning between <think> and </think>, "
                       "then give the final answer after the closing tag.")
THINK_GEN_SYSTEM_PROMPT = ("Before drawing, plan the picture: describe the objects, their attributes, counts "
                           "and layout between <think> and </think>; the image follows the closing tag.")


def _nemo() -> Any:
    """NeMo AutoModel's Bagel modules, imported on first use with an install hint when missing."""
    import importlib

    from PIL import ImageFile

    base = "nemo_automodel.components."
    # NeMo's dataset modules set PIL's process-wide LOAD_TRUNCATED_IMAGES on import, which would make every
    # image decoder of this process accept truncated files: keep the setting we had.
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        # full module paths: NeMo's lazy `components.models` package hides the real import error otherwise
        mods = [importlib.import_module(base + m) for m in (
            "models.bagel", "models.bagel.modeling_qwen2_packed", "models.bagel.modeling_siglip_navit",
            "models.bagel.state_dict_adapter", "datasets.multimodal.utils")]
    except ModuleNotFoundError as e:
        raise ParamError(f"{WHAT}: NeMo AutoModel's Bagel cannot be imported ({e}); {INSTALL_HINT}") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    bagel_pkg, qwen, siglip, sd_adapter, data_utils = mods

    class N:
        pass

    n = N()
    n.bagel, n.qwen, n.siglip, n.sd, n.data = bagel_pkg, qwen, siglip, sd_adapter, data_utils
    return n


# ---------------------------------------------------------------------------------------- attention
def torch_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int = 0, max_seqlen_k: int = 0,
                           causal: bool = False, **_: Any) -> torch.Tensor:
    """flash_attn_varlen_func's contract in plain PyTorch: packed (total, heads, dim) sequences delimited
    by cumulative lengths, grouped-query heads, and a causal mask aligned to the *end* of the keys (a
    query block appended after cached keys sees all of them). Exact, and slow: for CPU runs and tests."""
    out = torch.empty_like(q)
    groups = q.shape[1] // k.shape[1]
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        qi = q[cq[i]:cq[i + 1]].transpose(0, 1)                       # (H, Lq, D)
        ki = k[ck[i]:ck[i + 1]].transpose(0, 1).repeat_interleave(groups, 0)
        vi = v[ck[i]:ck[i + 1]].transpose(0, 1).repeat_interleave(groups, 0)
        lq, lk = qi.shape[1], ki.shape[1]
        mask = None
        if causal:
            mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
        o = torch.nn.functional.scaled_dot_product_attention(qi.float(), ki.float(), vi.float(), attn_mask=mask)
        out[cq[i]:cq[i + 1]] = o.transpose(0, 1).to(q.dtype)
    return out


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


@dataclass
class _NavitOutput:
    """Stand-in for NeMo's `BaseNavitOutputWithPast`: under transformers >= 5 every ModelOutput renames a
    `past_key_values` argument to `cache`, a field NeMo 0.7.0's class does not have, so its inference path
    fails on construction. Same two fields, no renaming."""

    packed_query_sequence: Any = None
    past_key_values: Any = None


def _allow_cpu_sdpa(qwen: Any) -> None:
    """NeMo pins its dense-mask attention to the memory-efficient SDPA kernel, which has no CPU
    implementation: allow the math kernel as the fallback. Installed once per process, not around one
    call, because with activation checkpointing the attention runs again inside backward(), after
    training_forward has returned. CUDA tensors keep the memory-efficient kernel (it ranks first)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    original = getattr(qwen.sdpa_kernel, "_srum_original", qwen.sdpa_kernel)
    if original is not qwen.sdpa_kernel:
        return

    @contextlib.contextmanager
    def kernel(backends: Any, *args: Any, **kwargs: Any) -> Iterator[None]:
        # torch takes the fastest allowed kernel that can run: on CUDA still the efficient one
        with sdpa_kernel(list(backends) + [SDPBackend.MATH], *args, **kwargs):
            yield

    kernel._srum_original = original
    qwen.sdpa_kernel = kernel


def _navit_output_broken(qwen: Any) -> bool:
    try:
        qwen.BaseNavitOutputWithPast(packed_query_sequence=None, past_key_values=None)
        return False
    except TypeError:
        return True


# --------------------------------------------------------------------------------------------- state
@dataclass
class _Context:
    """Per-sample KV-cache bookkeeping of a packed batch: cached length and next rope position."""

    cache: Any
    kv_lens: List[int]
    ropes: List[int]

    @staticmethod
    def merge(parts: Sequence["_Context"], cache: Any) -> "_Context":
        """One packed context from single-sample ones (`cache` an empty NaiveCache to fill), sample order kept."""
        for layer in range(len(cache.key_cache)):
            cache.key_cache[layer] = torch.cat([c.cache.key_cache[layer] for c in parts])
            cache.value_cache[layer] = torch.cat([c.cache.value_cache[layer] for c in parts])
        return _Context(cache, [k for c in parts for k in c.kv_lens], [r for c in parts for r in c.ropes])

    def index_layout(self, q_lens: Sequence[int], device: Any) -> Dict[str, torch.Tensor]:
        """Where new query tokens and old cache entries go in the merged (per sample: cache, then query) layout."""
        q_idx, kv_idx, start = [], [], 0
        for kv, q in zip(self.kv_lens, q_lens):
            kv_idx.extend(range(start, start + kv))
            q_idx.extend(range(start + kv, start + kv + q))
            start += kv + q
        return dict(query_lens=torch.tensor(list(q_lens), dtype=torch.int32, device=device),
                    key_values_lens=torch.tensor(self.kv_lens, dtype=torch.int32, device=device),
                    packed_query_indexes=torch.tensor(q_idx, dtype=torch.long, device=device),
                    packed_key_value_indexes=torch.tensor(kv_idx, dtype=torch.long, device=device))


def _inverse_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """u with shift * u / (1 + (shift - 1) u) == t (the inverse of the timestep shift)."""
    return t / (shift - (shift - 1.0) * t)


class BagelModel:
    """UnifiedModel (models/base.py) over NeMo AutoModel's BagelForUnifiedMultimodal."""

    name = "bagel"
    supports_think = True

    def __init__(self, params: Optional[Mapping[str, Any]] = None, checkpoint: Optional[str] = None, *,
                 for_training: bool = True):
        n = self.n = _nemo()
        p = Params(params, WHAT)
        location = checkpoint or p.str("model_path")
        if not location:
            raise ParamError(f"{WHAT}: give the weights directory as model.checkpoint or parameter 'model_path'")
        self.root = root = local_weights(location, WHAT)
        self.device = resolve_device(p.str("device"), WHAT)
        self.dtype = resolve_dtype(p.str("dtype"), self.device, WHAT)
        self.trainable = p.choice("trainable", ("gen", "all"), "gen")
        self.text_dropout = p.float("text_dropout", 0.1, min=0.0, max=1.0)
        self.sample_shift = p.float("timestep_shift", 3.0, min=1e-3)
        cfg_interval = [float(x) for x in (p.str("cfg_interval", "0.4,1.0") or "").split(",")]
        if len(cfg_interval) != 2 or not 0.0 <= cfg_interval[0] <= cfg_interval[1] <= 1.0:
            raise ParamError(f"{WHAT}: cfg_interval must be 'low,high' with 0 <= low <= high <= 1")
        self.cfg_interval = tuple(cfg_interval)
        self.cfg_renorm = p.choice("cfg_renorm", ("global", "none"), "global")
        self.cfg_renorm_min = p.float("cfg_renorm_min", 0.0, min=0.0, max=1.0)
        self.default_resolution = p.int("default_resolution", 1024, min=16)
        self.max_think_tokens = p.int("max_think_tokens", 512, min=1)
        varlen = p.choice("varlen_attention", ("auto", "flash_attn", "torch"), "auto")
        vit_max = p.int("vit_max_image_size", None, min=14)
        vit_min = p.int("vit_min_image_size", None, min=14)
        ac = p.bool("activation_checkpointing", False)
        fsdp = p.choice("fsdp", ("off", "full", "hybrid"), "off")
        fsdp_replicas = p.int("fsdp_replicas", None, min=1)
        p.check_unused()
        if varlen == "auto":
            varlen = "flash_attn" if getattr(n.qwen, "_HAS_FLASH_ATTN", False) else "torch"
        self.varlen = varlen

        self.config = self._load_config(root)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        self.tokenizer, self.ids, _ = n.data.add_special_tokens(tok)
        if len(self.tokenizer) > self.config.text_config.vocab_size:
            raise ParamError(f"{WHAT}: tokenizer of {root} has {len(self.tokenizer)} tokens, more than the model's "
                             f"vocab_size {self.config.text_config.vocab_size}")
        with torch.random.fork_rng(devices=[]):   # the caller's random stream is not ours to move
            torch.manual_seed(0)   # whatever the checkpoint does not set starts the same on every rank
            self.model = n.bagel.BagelForUnifiedMultimodal(self.config)
        self._load_weights(root)
        self.vae, self.vae_params = self._load_vae(root)
        # `dtype` is the storage of the weights (bf16 on a GPU by default: 14 B MoT parameters in half the
        # memory); the parameters that train are kept in float32 (master weights, see trainable_parameters).
        self.model.to(self.device, self.dtype)
        self.vae.to(self.device).eval().requires_grad_(False)
        self.vae.reg.sample = False   # the posterior mean: one image, one latent (deterministic training data)
        mdl = self.model.model
        self.p = int(mdl.latent_patch_size)
        self.latent_channels = int(mdl.latent_channel)
        self.downsample = int(mdl.latent_downsample)    # pixels per latent token side (VAE x patch)
        self.max_latent = int(mdl.max_latent_size)
        self._pos_ids = (n.data.get_flattened_position_ids_interpolate if self.config.interpolate_pos
                         else n.data.get_flattened_position_ids_extrapolate)
        if self.config.visual_und:
            from PIL import ImageFile

            truncated = ImageFile.LOAD_TRUNCATED_IMAGES
            from nemo_automodel.components.datasets.multimodal.transforms import ImageTransform

            ImageFile.LOAD_TRUNCATED_IMAGES = truncated  # see _nemo()

            side = self.config.vit_patch_size * self.config.vit_max_num_patch_per_side
            vmax = vit_max or min(980, side)
            self.vit_transform = ImageTransform(vmax, vit_min or min(224, vmax), self.config.vit_patch_size)
        if self.device.type == "cpu":
            _allow_cpu_sdpa(n.qwen)
        self._select_trainable()
        self.handles_data_parallel = False
        if ac:
            self._activation_checkpointing()
        if fsdp != "off":
            self._master_weights()
            self._shard(fsdp, fsdp_replicas)
        self.model.train(for_training)

    # ------------------------------------------------------------------------------------- loading
    def _load_config(self, root: Path) -> Any:
        n = self.n
        from transformers import Qwen2Config

        if (root / "llm_config.json").is_file() and (root / "vit_config.json").is_file():
            # The released BAGEL-7B-MoT layout: two sub-configs; the top-level settings are those of
            # Bagel's own inference set-up (MoT layers, QK-norm, 64x64 latent grid, 2x2 latent patches).
            llm = Qwen2Config.from_json_file(str(root / "llm_config.json"))
            llm.qk_norm, llm.tie_word_embeddings, llm.layer_module = True, False, "Qwen2MoTDecoderLayer"
            vit = n.siglip.SiglipVisionConfig.from_json_file(str(root / "vit_config.json"))
            vit.rope = False
            ae = self._vae_arch(root)
            return n.bagel.BagelConfig(text_config=llm, vision_config=vit, visual_und=True, visual_gen=True, stage=2,
                                       vae_config={"z_channels": ae.z_channels, "downsample": ae.downsample},
                                       vit_max_num_patch_per_side=70, connector_act="gelu_pytorch_tanh",
                                       latent_patch_size=2, max_latent_size=64, vit_rope=False)
        if (root / "config.json").is_file():
            cfg = n.bagel.BagelConfig.from_pretrained(str(root), local_files_only=True)
            cfg.stage = 2
            return cfg
        raise ParamError(f"{WHAT}: {root} has neither llm_config.json + vit_config.json (released Bagel layout) "
                         "nor a Bagel config.json")

    def _vae_arch(self, root: Path) -> Any:
        n = self.n
        if (root / "ae_config.json").is_file():
            return n.bagel.AutoEncoderParams(**json.loads((root / "ae_config.json").read_text()))
        from nemo_automodel.components.models.bagel.autoencoder import default_autoencoder_params

        return default_autoencoder_params()

    def _load_weights(self, root: Path) -> None:
        n = self.n
        flat = load_safetensors_dir(root, WHAT, names=("ema.safetensors", "model.safetensors"))
        flat = {k: v for k, v in flat.items() if not (k.startswith("encoder.") or k.startswith("decoder."))}
        state = n.sd.BagelStateDictAdapter(self.config, stage="stage2").from_hf(flat, stage="stage2", strict=False)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        # The sine-cosine position tables are rebuilt at construction; everything else must come from disk.
        missing = [k for k in missing if not k.endswith("pos_embed")]
        if missing or unexpected:
            raise ParamError(f"{WHAT}: weights in {root} do not fit the config: {len(missing)} missing "
                             f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {list(unexpected)[:3]})")

    def _load_vae(self, root: Path) -> Tuple[Any, Any]:
        n = self.n
        arch = self._vae_arch(root)
        vae = n.bagel.AutoEncoder(arch)
        if not (root / "ae.safetensors").is_file():
            raise ParamError(f"{WHAT}: {root} has no ae.safetensors (the VAE)")
        from safetensors.torch import load_file

        missing, unexpected = vae.load_state_dict(load_file(str(root / "ae.safetensors")), strict=False)
        if missing or unexpected:
            raise ParamError(f"{WHAT}: {root}/ae.safetensors does not fit the VAE {arch}: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        return vae, arch

    def _select_trainable(self) -> None:
        gen = [re.compile(p) for p in self.n.sd.GEN_PATTERNS]
        self._trainable_names: List[str] = []
        for name, param in self.model.named_parameters():
            key = name.removeprefix("model.")
            want = self.trainable == "all" or any(r.search(key) for r in gen)
            if key.endswith("pos_embed"):
                want = False   # fixed sine-cosine tables
            param.requires_grad_(want)
            if want:
                self._trainable_names.append(name)
        if self.trainable == "gen":
            # Und-side activations of the pack carry no gradient when only the generation expert learns.
            self.config.text_config.freeze_und = True

    def _activation_checkpointing(self) -> None:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

        layers = self.model.model.language_model.model.layers
        for i, layer in enumerate(layers):
            layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)

    def _shard(self, mode: str, replicas: Optional[int]) -> None:
        """FSDP2: each decoder layer, then the root. `hybrid` shards within a replica group (a node) and
        replicates across groups (HSDP). Needs an initialised process group (torchrun) and CUDA."""
        import os

        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not dist.is_initialized():
            raise ParamError(f"{WHAT}: fsdp={mode} needs torch.distributed initialised (run under torchrun)")
        world = dist.get_world_size()
        dev = self.device.type
        if mode == "hybrid":
            groups = replicas or max(1, world // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
            if world % groups:
                raise ParamError(f"{WHAT}: fsdp_replicas={groups} does not divide the world size {world}")
            mesh = init_device_mesh(dev, (groups, world // groups), mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh(dev, (world,), mesh_dim_names=("shard",))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in self.model.model.language_model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        # The root keeps its float32 inputs: NeMo draws the flow noise like the clean latent it is given,
        # and the adapter replays that draw in float32 (autocast still runs the root's matmuls in bf16).
        fully_shard(self.model, mesh=mesh, mp_policy=MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False))
        self.handles_data_parallel = True   # gradients are reduced by FSDP, not by the train stage's hooks

    # ----------------------------------------------------------------------------------- utilities
    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @contextlib.contextmanager
    def _kernels(self) -> Iterator[None]:
        """Make NeMo's attention calls runnable on this device for the duration of one call."""
        with contextlib.ExitStack() as stack:
            if self.varlen == "torch":
                stack.enter_context(_patched(self.n.qwen, "_flash_attn_varlen", torch_varlen_attention))
                stack.enter_context(_patched(self.n.siglip, "_flash_attn_varlen", torch_varlen_attention))
            elif not getattr(self.n.qwen, "_HAS_FLASH_ATTN", False):
                raise RuntimeError(f"{WHAT}: flash-attn is not installed; Bagel's KV-cache inference and ViT need it "
                                   "(GPU), or set varlen_attention=torch for the slow exact PyTorch path")
            yield

    def _text_ids(self, text: str) -> List[int]:
        return [self.ids["bos_token_id"], *self.tokenizer.encode(text, add_special_tokens=False), self.ids["eos_token_id"]]

    def _grid(self, h: int, w: int) -> Tuple[int, int]:
        if h % self.downsample or w % self.downsample or h <= 0 or w <= 0:
            raise ValueError(f"{WHAT}: image size {h}x{w} must be a positive multiple of {self.downsample} "
                             "(VAE downsampling x latent patch)")
        gh, gw = h // self.downsample, w // self.downsample
        if max(gh, gw) > self.max_latent:
            raise ValueError(f"{WHAT}: image size {h}x{w} gives a {gh}x{gw} latent grid, larger than the model's "
                             f"max_latent_size {self.max_latent} (at most {self.max_latent * self.downsample} px a side)")
        return gh, gw

    # ------------------------------------------------------------------------------------ training
    def training_forward(self, images: torch.Tensor, prompts: Sequence[str], t: torch.Tensor,
                         generator: Optional[torch.Generator] = None) -> FlowOutput:
        n, mdl = self.n, self.model.model
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{WHAT}: images must be (B, 3, H, W), got {tuple(images.shape)}")
        b, _, h, w = images.shape
        if len(prompts) != b or tuple(t.shape) != (b,):
            raise ValueError(f"{WHAT}: {b} images, {len(prompts)} prompts, t of shape {tuple(t.shape)}")
        gh, gw = self._grid(h, w)
        dev = self.device
        with torch.no_grad():
            latents = self.vae.encode(images.to(dev, torch.float32))            # (B, C, gh p, gw p)
        drop = (torch.rand(b, generator=generator) < self.text_dropout).tolist() if self.text_dropout > 0 else [False] * b
        shift = float(mdl.timestep_shift)
        u = _inverse_shift(t.detach().double().cpu().clamp(1e-6, 1 - 1e-6), shift)
        logits = torch.log(u) - torch.log1p(-u)                                    # NeMo applies sigmoid, then shift

        text_ids, text_idx, pos, vae_idx, lat_pos, masks, sample_lens, steps = [], [], [], [], [], [], [], []
        cur = 0
        for i in range(b):
            splits, modes, rope = [], [], 0
            if not drop[i]:
                ids = self._text_ids(prompts[i])
                text_ids += ids
                text_idx += range(cur, cur + len(ids))
                pos += range(len(ids))
                cur += len(ids)
                rope = len(ids)
                splits.append(len(ids))
                modes.append("causal")
            text_ids.append(self.ids["start_of_image"])
            text_idx.append(cur)
            vae_idx += range(cur + 1, cur + 1 + gh * gw)
            text_ids.append(self.ids["end_of_image"])
            text_idx.append(cur + 1 + gh * gw)
            cur += gh * gw + 2
            pos += [rope] * (gh * gw + 2)
            splits.append(gh * gw + 2)
            modes.append("noise")
            lat_pos.append(self._pos_ids(h, w, self.downsample, max_num_patches_per_side=self.max_latent))
            masks.append(n.data.prepare_attention_mask_per_sample(splits, modes, device=dev))
            sample_lens.append(sum(splits))
            steps += [float(logits[i])] * (gh * gw)

        clean = torch.cat([n.data.patchify(lat, self.p) for lat in latents])      # (B N, p p C), NeMo's token order
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        captured: List[torch.Tensor] = []
        hook = mdl.llm2vae.register_forward_hook(lambda _m, _i, out: captured.append(out))
        as_long = dict(dtype=torch.long, device=dev)
        try:
            with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if dev.type == "cuda" else []), \
                    self._kernels(), self._autocast():
                torch.manual_seed(seed)
                noise = torch.randn_like(clean)            # the same draw NeMo's forward makes under this seed
                torch.manual_seed(seed)
                out = self.model(
                    sequence_length=cur, packed_text_ids=torch.tensor(text_ids, **as_long),
                    packed_text_indexes=torch.tensor(text_idx, **as_long), sample_lens=sample_lens,
                    packed_position_ids=torch.tensor(pos, **as_long), nested_attention_masks=masks,
                    padded_latent=latents, patchified_vae_latent_shapes=[(gh, gw)] * b,
                    packed_latent_position_ids=torch.cat(lat_pos).to(dev),
                    packed_vae_token_indexes=torch.tensor(vae_idx, **as_long),
                    packed_timesteps=torch.tensor(steps, dtype=torch.float32, device=dev),
                    mse_loss_indexes=torch.tensor(vae_idx, **as_long))
        finally:
            hook.remove()
        if len(captured) != 1 or out.get("mse") is None:
            raise RuntimeError(f"{WHAT}: NeMo's forward did not run the flow head once ({len(captured)} calls)")
        v, target = captured[0], noise - clean
        with torch.no_grad():
            if not torch.allclose(out["mse"].detach(), (v.detach() - target) ** 2, rtol=1e-4, atol=1e-6):
                raise RuntimeError(f"{WHAT}: the replayed flow noise does not reproduce NeMo's per-token MSE; NeMo's "
                                   "forward changed how it draws noise, so the adapter cannot expose the target")
        c = v.shape[-1]
        return FlowOutput(v=v.reshape(b, gh * gw, c), target=target.reshape(b, gh * gw, c), grid=(gh, gw))

    def _master_weights(self) -> None:
        """Trained parameters in float32 whatever `dtype` stores the rest: AdamW updates at a 2e-5 learning
        rate vanish in bf16 rounding. Compute still runs in bf16 under autocast."""
        if self.handles_data_parallel:
            return
        with torch.no_grad():
            for q in self.model.parameters():
                if q.requires_grad and q.dtype != torch.float32:
                    q.data = q.data.float()

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The generation expert and flow head (trainable=gen) or everything; float32 from here on."""
        self._master_weights()
        return [q for q in self.model.parameters() if q.requires_grad]

    def state_dict(self) -> Dict[str, Any]:
        """The trained parameters only, as full tensors on the CPU.

        Under FSDP this is a collective: every rank must call it; rank 0 receives the tensors, the other
        ranks an empty dict."""
        if self.handles_data_parallel:
            import torch.distributed as dist
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if dist.get_rank() != 0:
                return {}
        else:
            full = dict(self.model.named_parameters())
        return {k: full[k].detach().to("cpu", copy=True) for k in self._trainable_names}

    def load_state_dict(self, state: Dict[str, Any]) -> Any:
        keys, want = set(state), set(self._trainable_names)
        if keys != want:
            raise ValueError(f"{WHAT}: state has {len(keys - want)} unknown and lacks {len(want - keys)} trained "
                             f"parameters (e.g. {sorted(keys - want)[:2]} / {sorted(want - keys)[:2]})")
        if self.handles_data_parallel:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            # a copy: torch replaces the dict's tensors with their shards, and the caller's dict stays whole
            return set_model_state_dict(self.model, dict(state), options=StateDictOptions(full_state_dict=True,
                                                                                          strict=False))
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)
        return None

    # ----------------------------------------------------------------------------------- inference
    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        # NeMo's layers dispatch on `training`: eval mode selects forward_inference.
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self._kernels(), self._autocast(), contextlib.ExitStack() as stack:
                if _navit_output_broken(self.n.qwen):
                    stack.enter_context(_patched(self.n.qwen, "BaseNavitOutputWithPast", _NavitOutput))
                yield
        finally:
            self.model.train(was)

    def _new_context(self, batch: int) -> _Context:
        lm = self.model.model.language_model
        return _Context(self.n.qwen.NaiveCache(lm.config.num_hidden_layers), [0] * batch, [0] * batch)

    def _lm_inference(self, ctx: _Context, embeds: torch.Tensor, q_lens: Sequence[int], positions: List[int], *,
                      causal: bool, update: bool, mode: str = "und", **extra: Any) -> torch.Tensor:
        lm = self.model.model.language_model
        layout = ctx.index_layout(q_lens, self.device)
        out = lm.forward_inference(packed_query_sequence=embeds, packed_query_position_ids=torch.tensor(
            positions, dtype=torch.long, device=self.device), past_key_values=ctx.cache, update_past_key_values=update,
            is_causal=causal, mode=mode, **layout, **extra)
        if update:
            ctx.cache = out.past_key_values
        return out.packed_query_sequence

    def _append_text(self, ctx: _Context, token_lists: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefill one text split per sample (causal). Returns the hidden state of each sample's last token."""
        lm = self.model.model.language_model
        ids = torch.tensor([t for ts in token_lists for t in ts], dtype=torch.long, device=self.device)
        positions = [r + j for r, ts in zip(ctx.ropes, token_lists) for j in range(len(ts))]
        hidden = self._lm_inference(ctx, lm.model.embed_tokens(ids), [len(ts) for ts in token_lists], positions,
                                    causal=True, update=True)
        ends = torch.tensor([len(ts) for ts in token_lists], device=self.device).cumsum(0) - 1
        for i, ts in enumerate(token_lists):
            ctx.kv_lens[i] += len(ts)
            ctx.ropes[i] += len(ts)
        return hidden[ends]

    def _append_images(self, ctx: _Context, images: Sequence[Any]) -> None:
        """Prefill one ViT image split per sample: <|vision_start|> patches <|vision_end|>, full attention,
        one rope position for the whole image (Bagel's understanding input)."""
        n, mdl = self.n, self.model.model
        patches, pos_ids, lens = [], [], []
        for img in images:
            x = self.vit_transform(_pil(img))
            patches.append(n.data.patchify(x, self.config.vit_patch_size))
            pos_ids.append(self._vit_pos(x.shape[1], x.shape[2]))
            lens.append(patches[-1].shape[0])
        seqlens = torch.tensor(lens, dtype=torch.int32, device=self.device)
        flat_pos = torch.cat(pos_ids).to(self.device)
        emb = mdl.vit_model(packed_pixel_values=torch.cat(patches).to(self.device), packed_flattened_position_ids=flat_pos,
                            cu_seqlens=torch.nn.functional.pad(seqlens.cumsum(0), (1, 0)).to(torch.int32),
                            max_seqlen=int(max(lens)))
        emb = mdl.connector(emb) + mdl.vit_pos_embed(flat_pos)
        lm = self.model.model.language_model
        marks = lm.model.embed_tokens(torch.tensor([self.ids["start_of_image"], self.ids["end_of_image"]],
                                                   device=self.device))
        rows, start, positions = [], 0, []
        for i, L in enumerate(lens):
            rows += [marks[:1], emb[start:start + L].to(marks.dtype), marks[1:]]
            start += L
            positions += [ctx.ropes[i]] * (L + 2)
        self._lm_inference(ctx, torch.cat(rows), [L + 2 for L in lens], positions, causal=False, update=True)
        for i, L in enumerate(lens):
            ctx.kv_lens[i] += L + 2
            ctx.ropes[i] += 1

    def _vit_pos(self, h: int, w: int) -> torch.Tensor:
        get = (self.n.data.get_flattened_position_ids_interpolate if self.config.interpolate_pos
               else self.n.data.get_flattened_position_ids_extrapolate)
        return get(h, w, self.config.vit_patch_size, max_num_patches_per_side=self.config.vit_max_num_patch_per_side)

    def _generate_text(self, ctx: _Context, max_new_tokens: int, temperature: float,
                       generator: Optional[torch.Generator]) -> List[str]:
        """Decode a reply per sample, starting from <|im_start|> and stopping at <|im_end|>; every token
        goes into the cache, so the reply becomes context for what follows (think, then draw)."""
        lm = self.model.model.language_model
        eos = self.ids["eos_token_id"]
        b = len(ctx.kv_lens)
        current = [self.ids["bos_token_id"]] * b
        out: List[List[int]] = [[] for _ in range(b)]
        done = [False] * b
        for _ in range(max_new_tokens):
            hidden = self._append_text(ctx, [[c] for c in current])
            logits = lm.lm_head(hidden).float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1).tolist()
            else:
                nxt = logits.argmax(-1).tolist()
            for i in range(b):
                if not done[i]:
                    if nxt[i] == eos:
                        done[i] = True
                    else:
                        out[i].append(nxt[i])
            if all(done):
                break
            current = [eos if done[i] else nxt[i] for i in range(b)]
        if not all(done):   # close the reply in the cache, as a finished one would be
            self._append_text(ctx, [[eos] for _ in range(b)])
        return [self.tokenizer.decode(o, skip_special_tokens=False) for o in out]

    def _velocity(self, ctx: _Context, x: torch.Tensor, t: float, gh: int, gw: int) -> torch.Tensor:
        """One flow prediction for every sample's latent tokens x (B N, p p C) at time t, attending to the
        sample's cached context without changing it."""
        mdl, lm = self.model.model, self.model.model.language_model
        b, nt = len(ctx.kv_lens), gh * gw
        marks = lm.model.embed_tokens(torch.tensor([self.ids["start_of_image"], self.ids["end_of_image"]],
                                                   device=self.device))
        pos = self._pos_ids(gh * self.downsample, gw * self.downsample, self.downsample,
                            max_num_patches_per_side=self.max_latent).to(self.device)
        tt = torch.full((nt,), t, device=self.device)
        lat = mdl.vae2llm(x) + mdl.time_embedder(tt).repeat(b, 1) + mdl.latent_pos_embed(pos).repeat(b, 1)
        rows, text_idx, vae_idx, positions = [], [], [], []
        for i in range(b):
            base = i * (nt + 2)
            rows += [marks[:1], lat[i * nt:(i + 1) * nt].to(marks.dtype), marks[1:]]
            text_idx += [base, base + nt + 1]
            vae_idx += range(base + 1, base + 1 + nt)
            positions += [ctx.ropes[i]] * (nt + 2)
        vae_idx_t = torch.tensor(vae_idx, dtype=torch.long, device=self.device)
        hidden = self._lm_inference(ctx, torch.cat(rows), [nt + 2] * b, positions, causal=False, update=False,
                                    mode="gen", packed_vae_token_indexes=vae_idx_t,
                                    packed_text_indexes=torch.tensor(text_idx, dtype=torch.long, device=self.device))
        return mdl.llm2vae(hidden[vae_idx_t]).float()

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], *, think: bool = False, steps: int = 20,
                 guidance: float = 2.0, resolution: Optional[int] = None) -> List[GeneratedImage]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{WHAT}: {len(prompts)} prompts but {len(seeds)} seeds")
        if steps < 1:
            raise ValueError(f"{WHAT}: steps must be >= 1, got {steps}")
        if not prompts:
            return []
        res = int(resolution or self.default_resolution)
        gh, gw = self._grid(res, res)
        b, nt, c = len(prompts), gh * gw, self.p * self.p * self.latent_channels
        # One CPU generator per seed: the same (prompt, seed) gives the same image in any batch.
        x = torch.cat([torch.randn(nt, c, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(self.device)
        thoughts: List[Optional[str]] = [None] * b
        with self._inference():
            if think:
                # Each sample thinks in its own context (how long it thinks must not depend on the others in
                # the batch); the finished contexts are then packed for the shared denoising loop.
                parts = []
                for i, prompt in enumerate(prompts):
                    one = self._new_context(1)
                    self._append_text(one, [self._text_ids(THINK_GEN_SYSTEM_PROMPT)])
                    self._append_text(one, [self._text_ids(prompt)])
                    text = self._generate_text(one, self.max_think_tokens, 0.0, None)[0]
                    thoughts[i] = split_think(text)[1] or text.strip()
                    parts.append(one)
                cond = _Context.merge(parts, self._new_context(b).cache)
            else:
                cond = self._new_context(b)
                self._append_text(cond, [self._text_ids(p) for p in prompts])
            uncond = self._new_context(b)     # text CFG: the same image tokens with no text at all
            ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
            ts = self.sample_shift * ts / (1 + (self.sample_shift - 1) * ts)
            for i in range(steps):
                t, dt = float(ts[i]), float(ts[i] - ts[i + 1])
                v = self._velocity(cond, x, t, gh, gw)
                if guidance > 1.0 and self.cfg_interval[0] <= t <= self.cfg_interval[1]:
                    v_u = self._velocity(uncond, x, t, gh, gw)
                    v_g = v_u + guidance * (v - v_u)
                    if self.cfg_renorm == "global":
                        # keep each sample's guided velocity no longer than its conditional one
                        vn = v.reshape(b, -1).norm(dim=1)
                        gn = v_g.reshape(b, -1).norm(dim=1).clamp_min(1e-12)
                        scale = (vn / gn).clamp(self.cfg_renorm_min, 1.0)
                        v_g = v_g * scale.repeat_interleave(nt)[:, None]
                    v = v_g
                x = x - v * dt                              # t runs from noise (1) to data (0)
            images = self._decode(x, b, gh, gw)
        return [GeneratedImage(image=img, seed=int(s), think_text=th) for img, s, th in zip(images, seeds, thoughts)]

    def _decode(self, x: torch.Tensor, b: int, gh: int, gw: int) -> List[Any]:
        """Packed latent tokens (B N, p p C) -> images."""
        from PIL import Image

        lat = x.reshape(b, gh, gw, self.p, self.p, self.latent_channels).permute(0, 5, 1, 3, 2, 4)
        pixels = self.vae.decode(lat.reshape(b, self.latent_channels, gh * self.p, gw * self.p).float())
        arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]

    def predicted_x0(self, prompts: Sequence[str], seeds: Sequence[int], *, steps: int = 20, guidance: float = 2.0,
                     at_steps: Sequence[int] = (), resolution: Optional[int] = None,
                     think: bool = False) -> Dict[int, List[Any]]:
        """The image the sampler predicts at sampling steps `at_steps` (1-based; step `steps` is the generated
        image): x0 = x_t - t v, v the step's guided velocity read from consecutive latents of the `generate`
        loop (each step's first velocity call records its latents and time), decoded by the VAE."""
        bad = [k for k in at_steps if not 1 <= int(k) <= steps]
        if bad:
            raise ValueError(f"{WHAT}: sampling steps {bad} are outside 1..{steps}")
        states: List[Tuple[torch.Tensor, float]] = []
        velocity = self._velocity

        def recording(ctx: Any, x: torch.Tensor, t: float, gh: int, gw: int) -> torch.Tensor:
            if not states or states[-1][1] != t:        # the conditional call comes first at each step
                states.append((x.detach().clone(), float(t)))
            return velocity(ctx, x, t, gh, gw)

        self._velocity = recording                       # type: ignore[method-assign]
        try:
            final = self.generate(prompts, seeds, think=think, steps=steps, guidance=guidance, resolution=resolution)
        finally:
            del self._velocity                           # back to the class's method
        res = int(resolution or self.default_resolution)
        gh, gw = self._grid(res, res)
        out: Dict[int, List[Any]] = {}
        with self._inference():
            for k in sorted({int(k) for k in at_steps}):
                if k == steps:
                    out[k] = [g.image for g in final]
                    continue
                (x_k, t_k), (x_n, t_n) = states[k - 1], states[k]
                out[k] = self._decode(x_k - t_k * (x_n - x_k) / (t_n - t_k), len(prompts), gh, gw)
        return out

    def understand(self, images: Sequence[Any], instructions: Sequence[str], *, max_new_tokens: int = 256,
                   temperature: float = 0.0, think: bool = False,
                   generator: Optional[torch.Generator] = None) -> List[Tuple[str, str]]:
        if not self.config.visual_und:
            raise ParamError(f"{WHAT}: this checkpoint was built without the understanding ViT (visual_und=False)")
        if len(images) != len(instructions):
            raise ValueError(f"{WHAT}: {len(images)} images but {len(instructions)} instructions")
        if not images:
            return []
        with self._inference():
            ctx = self._new_context(len(images))
            if think:
                self._append_text(ctx, [self._text_ids(THINK_SYSTEM_PROMPT)] * len(images))
            self._append_images(ctx, images)
            self._append_text(ctx, [self._text_ids(s) for s in instructions])
            texts = self._generate_text(ctx, max_new_tokens, temperature, generator)
        return [split_think(s) for s in texts]


def _pil(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    import numpy as np

    return Image.fromarray(np.asarray(image, dtype=np.uint8)[..., :3])


def load_bagel_model(params: Optional[Mapping[str, Any]] = None, checkpoint: Optional[str] = None) -> BagelModel:
    """Registry factory (models/base.py MODEL_ADAPTERS['bagel'])."""
    return BagelModel(params, checkpoint)


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


# ---------------------------------------------------------------------------------------------------
# A randomly initialised Bagel in a local directory (tests, CPU and GPU smoke runs; never a hub)
# ---------------------------------------------------------------------------------------------------
BAGEL_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")


def save_random_bagel(path: str | Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 2, heads: int = 4,
                      kv_heads: int = 2, vit_hidden_size: int = 32, vit_layers: int = 3, vit_image_size: int = 56,
                      max_latent_size: int = 16, vae_channels: int = 32, z_channels: int = 4,
                      init_std: float = 0.02, tokenizer_dir: Optional[str | Path] = None,
                      intermediate_size: Optional[int] = None, vocab_size: Optional[int] = None) -> Path:
    """Write a randomly initialised stage-2 Bagel (MoT layers, ViT, VAE) to `path` in the layout the
    adapter loads: config.json (BagelConfig), ema.safetensors, ae.safetensors + ae_config.json, tokenizer.

    Defaults are tiny (CPU, seconds); the BAGEL-7B-MoT widths (hidden 3584, 28 layers, 28/4 heads,
    intermediate 18944, SigLIP 1152 x 26 at 980 px, VAE 128 channels, z 16) give a random model of the real
    size for GPU timing. `tokenizer_dir` reuses a Qwen2 tokenizer directory; otherwise a byte-level BPE
    is trained locally. The flow head `llm2vae` is drawn at `init_std` instead of Bagel's zero init, so
    the random model's velocity depends on its input."""
    import safetensors.torch
    from transformers import AutoTokenizer, Qwen2TokenizerFast

    from .common import train_tiny_tokenizer

    n = _nemo()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    else:
        tok = Qwen2TokenizerFast(tokenizer_object=train_tiny_tokenizer(BAGEL_SPECIAL_TOKENS), eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>", unk_token=None)
    tok.save_pretrained(str(path))
    downsample = 2 ** 3
    vocab = vocab_size or len(tok)
    cfg = n.bagel.BagelConfig(
        text_config=dict(vocab_size=vocab, hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=32768, tie_word_embeddings=False, pad_token_id=0,
                         initializer_range=init_std, rope_theta=1000000.0),
        vision_config=dict(hidden_size=vit_hidden_size, intermediate_size=2 * vit_hidden_size,
                           num_hidden_layers=vit_layers, num_attention_heads=max(1, vit_hidden_size // 16),
                           image_size=vit_image_size, patch_size=14, rope=False),
        visual_und=True, visual_gen=True, stage=2, vae_config={"z_channels": z_channels, "downsample": downsample},
        max_latent_size=max_latent_size, latent_patch_size=2, vit_max_num_patch_per_side=vit_image_size // 14,
        connector_act="gelu_pytorch_tanh", vit_rope=False, pad_token_id=0)
    torch.manual_seed(seed)
    model = n.bagel.BagelForUnifiedMultimodal(cfg)
    model.initialize_weights()
    torch.nn.init.normal_(model.model.llm2vae.weight, std=init_std)
    # The saved config must not carry the ViT layer offset NeMo applies at construction (it re-applies it).
    cfg.vision_config.num_hidden_layers = vit_layers
    cfg._bagel_vit_select_layer_applied = False
    cfg.save_pretrained(str(path))
    state = {k.removeprefix("model."): v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(path / "ema.safetensors"))
    ae = n.bagel.AutoEncoderParams(resolution=256, in_channels=3, downsample=downsample, ch=vae_channels, out_ch=3,
                                   ch_mult=[1, 2, 4, 4] if vae_channels >= 128 else [1, 1, 1, 1], num_res_blocks=1,
                                   z_channels=z_channels, scale_factor=0.3611, shift_factor=0.1159)
    (path / "ae_config.json").write_text(json.dumps(ae.__dict__))
    safetensors.torch.save_file({k: v.contiguous() for k, v in n.bagel.AutoEncoder(ae).state_dict().items()},
                                str(path / "ae.safetensors"))
    return path
