"""A randomly initialised Bagel in a local directory (tests, CPU and GPU smoke runs; never a hub)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from .nemo import _nemo


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

    from ..common import train_tiny_tokenizer

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
