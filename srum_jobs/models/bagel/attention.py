"""Attention kernels around NeMo's Bagel: an exact PyTorch varlen attention for CPU runs, and the
patches that let its SDPA and NaViT paths run on CPU."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch


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
