"""Building a BagelModel from a checkpoint directory: configuration, weights, VAE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Tuple

from ..common import ParamError, load_safetensors_dir
from .nemo import WHAT


class Loading:
    """BagelModel's loading half (mixin)."""

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
