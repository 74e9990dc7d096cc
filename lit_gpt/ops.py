"""Plain PyTorch math shared by the model and the Triton kernels: the references each kernel is checked against,
RoPE tables, SDPA attention, and the one rule for when the kernels can run. Imports nothing from lit_gpt, so the
model and the kernels both build on it without importing each other."""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where the kernels run (slowly) on CPU tensors: how the tests check them."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernels_supported(t: torch.Tensor) -> bool:
    """Whether the Triton kernels can take this tensor: CUDA, or any device under the interpreter."""
    return t.is_cuda or interpreting()


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise in float32, cast back, then scale (the order HF Llama uses)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope_at(positions: torch.Tensor, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos/sin (len(positions), head_size) for the half-rotation layout: frequencies repeated for both
    halves."""
    device = positions.device
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, device=device, dtype=torch.float32) / head_size))
    freqs = torch.outer(positions.float(), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def build_rope_cache(length: int, head_size: int, base: float, device: Optional[torch.device] = None):
    """cos/sin for positions 0 .. length-1."""
    return rope_at(torch.arange(length, device=device), head_size, base)


def apply_rope_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """RoPE on q and k of shape (B, T, heads, hs) with cos/sin (T, hs): x*cos + rotate_half(x)*sin."""
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        xf = x.float()
        rotated = torch.cat([-x2, x1], dim=-1).float()
        return (xf * cos + rotated * sin).to(x.dtype)

    return rotate(q), rotate(k)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention on (B, T, heads, hs) tensors through PyTorch SDPA; GQA via enable_gqa (no k/v repeat)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)
