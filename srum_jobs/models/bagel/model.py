"""BagelModel: the adapter's state and construction; its loading, training set-up, training and inference
halves are the mixins of loading.py, parallel.py, training.py and inference.py."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Mapping, Optional, Tuple

import torch

from ..common import ParamError, Params, local_weights, resolve_device, resolve_dtype
from .attention import _allow_cpu_sdpa, _patched, torch_varlen_attention
from .inference import Inference
from .loading import Loading
from .nemo import WHAT, _nemo
from .parallel import Parallel
from .training import Training


class BagelModel(Loading, Parallel, Training, Inference):
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


def load_bagel_model(params: Optional[Mapping[str, Any]] = None, checkpoint: Optional[str] = None) -> BagelModel:
    """Registry factory (registry.MODEL_ADAPTERS['bagel'])."""
    return BagelModel(params, checkpoint)
