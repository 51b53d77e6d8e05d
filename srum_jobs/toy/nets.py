"""The toy unified model's networks.

- `TextEncoder`: word embeddings of the world's vocabulary + a small transformer; token states for
  cross-attention and a pooled vector for FiLM. A learned <null> token is the unconditional prompt (CFG).
- `FlowUNet`: a text-conditioned rectified-flow U-Net in pixel space (levels at 32, 16 and 8 pixels;
  FiLM from time + pooled text in every residual block; cross-attention to the prompt tokens at the two
  coarse levels; self-attention in the middle). A small DiT learned nothing useful in a prototype's five
  minutes on this CPU; this U-Net did.
- `PerceptionNet`: the understanding side's eyes: a small fully convolutional net labelling every pixel
  with background or one of the 18 object kinds (colour x shape). It is trained only on rendered scenes
  with corruptions and never sees the evaluator.
"""

from __future__ import annotations

import math
import re
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .world import (ADJECTIVES, ALL_OBJECTS, COLOR_NAMES, NON_SPATIAL_LINKS, NUM_CLASSES, NUMBERS, PLURALS,
                    RELATION_WORDS, SHAPES)

# Perception labels: 0 background, 1..18 the object kinds (world.class_index), then one "unclear blob"
# class per colour: a coloured region that is no well-formed shape (stretched, bitten, fused).
PERCEPTION_CLASSES = NUM_CLASSES + len(COLOR_NAMES)


def blob_class(color: str) -> int:
    return NUM_CLASSES + COLOR_NAMES.index(color)


def class_meaning(k: int) -> Tuple[Optional[str], Optional[str]]:
    """(colour, shape) of a perception class; (colour, None) for a blob; (None, None) for background."""
    if k <= 0:
        return None, None
    if k < NUM_CLASSES:
        o = ALL_OBJECTS[k - 1]
        return o.color, o.shape
    return COLOR_NAMES[k - NUM_CLASSES], None

# ------------------------------------------------------------------------------------------- text

SPECIALS = ("<pad>", "<null>", "<unk>")
_WORDS = sorted({w for phrase in (*COLOR_NAMES, *SHAPES, *PLURALS.values(), *ADJECTIVES.values(), *NUMBERS.values(),
                                  "a", "an", "and", "object", "objects", "shape", "shapes",
                                  *[w for ws in RELATION_WORDS.values() for w in ws], *NON_SPATIAL_LINKS)
                 for w in phrase.split()})
VOCAB: Tuple[str, ...] = SPECIALS + tuple(_WORDS)
_INDEX = {w: i for i, w in enumerate(VOCAB)}
MAX_TOKENS = 16


def tokenize(prompts: Sequence[str], max_tokens: int = MAX_TOKENS) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L) long, mask (B, L) bool True for real tokens). An empty prompt is the <null> token."""
    rows: List[List[int]] = []
    for p in prompts:
        words = re.findall(r"[a-z]+", str(p).lower())[:max_tokens]
        rows.append([_INDEX.get(w, _INDEX["<unk>"]) for w in words] or [_INDEX["<null>"]])
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, ids != 0


class TextEncoder(nn.Module):
    def __init__(self, dim: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), dim)
        self.pos = nn.Parameter(torch.zeros(MAX_TOKENS, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        x = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return x, pooled


# ------------------------------------------------------------------------------------------- U-Net


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def _groups(ch: int) -> int:
    return 8 if ch % 8 == 0 else 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(cond, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Attention(nn.Module):
    """Self-attention over pixels (context None) or cross-attention from pixels to prompt tokens."""

    def __init__(self, ch: int, context_dim: int | None = None, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.q = nn.Linear(ch, ch)
        kv_in = context_dim or ch
        self.kv = nn.Linear(kv_in, 2 * ch)
        self.out = nn.Linear(ch, ch)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                     # (B, HW, C)
        src = tokens if context is None else context
        q = self.q(tokens)
        k, v = self.kv(src).chunk(2, dim=-1)

        def split(t):
            return t.reshape(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)

        mask = None if context_mask is None else context_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        o = o.transpose(1, 2).reshape(b, h * w, c)
        return x + self.out(o).transpose(1, 2).reshape(b, c, h, w)


class FlowUNet(nn.Module):
    """v = net(x_t, t, prompt[, layout]): the rectified-flow velocity eps - x0 at flow time t.

    With `plan_channels` > 0 the net also reads a think-mode layout (plan.layout_array) as extra input
    channels beside x_t; a missing layout is zeros, which is plain mode."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), text_dim: int = 128, text_layers: int = 2,
                 cond_dim: int = 128, plan_channels: int = 0):
        super().__init__()
        c1, c2, c3 = channels
        self.text = TextEncoder(text_dim, text_layers)
        self.time_mlp = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.text_proj = nn.Linear(text_dim, cond_dim)
        self.cond_dim = cond_dim
        self.plan_channels = int(plan_channels)
        self.inp = nn.Conv2d(3 + self.plan_channels, c1, 3, padding=1)
        self.d1 = ResBlock(c1, c1, cond_dim)
        self.down1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.d2 = ResBlock(c2, c2, cond_dim)
        self.d2_x = Attention(c2, text_dim)
        self.down2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.d3 = ResBlock(c3, c3, cond_dim)
        self.d3_x = Attention(c3, text_dim)
        self.mid1 = ResBlock(c3, c3, cond_dim)
        self.mid_self = Attention(c3)
        self.mid_x = Attention(c3, text_dim)
        self.mid2 = ResBlock(c3, c3, cond_dim)
        self.u3 = ResBlock(2 * c3, c3, cond_dim)
        self.u3_x = Attention(c3, text_dim)
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c3, c2, 3, padding=1))
        self.u2 = ResBlock(2 * c2, c2, cond_dim)
        self.u2_x = Attention(c2, text_dim)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, c1, 3, padding=1))
        self.u1 = ResBlock(2 * c1, c1, cond_dim)
        self.out_norm = nn.GroupNorm(_groups(c1), c1)
        self.out = nn.Conv2d(c1, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def encode_text(self, prompts: Sequence[str], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(prompts)
        ids, mask = ids.to(device), mask.to(device)
        tokens, pooled = self.text(ids, mask)
        return tokens, pooled, mask

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                layout: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens, pooled, mask = text
        c = self.time_mlp(timestep_embedding(t, self.cond_dim)) + self.text_proj(pooled)
        if self.plan_channels:
            if layout is None:
                layout = x.new_zeros(x.shape[0], self.plan_channels, *x.shape[2:])
            x = torch.cat([x, layout.to(x)], 1)
        elif layout is not None:
            raise ValueError("this generator was built without plan channels: it has no think mode")
        h1 = self.d1(self.inp(x), c)
        h2 = self.d2_x(self.d2(self.down1(h1), c), tokens, mask)
        h3 = self.d3_x(self.d3(self.down2(h2), c), tokens, mask)
        m = self.mid1(h3, c)
        m = self.mid_x(self.mid_self(m), tokens, mask)
        m = self.mid2(m, c)
        u = self.u3_x(self.u3(torch.cat([m, h3], 1), c), tokens, mask)
        u = self.u2_x(self.u2(torch.cat([self.up2(u), h2], 1), c), tokens, mask)
        u = self.u1(torch.cat([self.up1(u), h1], 1), c)
        return self.out(F.silu(self.out_norm(u)))


# ----------------------------------------------------------------------------------------- perception


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.SiLU())


class PerceptionNet(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, PERCEPTION_CLASSES, H, W) logits per pixel: background, colour x shape,
    or an unclear blob of a colour.
    Three levels (full, 1/2, 1/4 resolution): a receptive field wide enough to see a whole object."""

    def __init__(self, width: int = 24):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 3 * width
        self.e1 = _ConvBlock(3, w1)
        self.e2 = _ConvBlock(w1, w2)
        self.e3 = _ConvBlock(w2, w3)
        self.d2 = _ConvBlock(w3 + w2, w2)
        self.d1 = _ConvBlock(w2 + w1, w1)
        self.head = nn.Conv2d(w1, PERCEPTION_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.e1(x)
        h2 = self.e2(F.avg_pool2d(h1, 2))
        h3 = self.e3(F.avg_pool2d(h2, 2))
        d2 = self.d2(torch.cat([F.interpolate(h3, scale_factor=2.0, mode="nearest"), h2], 1))
        d1 = self.d1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), h1], 1))
        return self.head(d1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
