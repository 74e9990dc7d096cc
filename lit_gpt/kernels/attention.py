"""Causal self-attention on (B, T, heads, hs) tensors through the fastest backend the device offers.

"auto" (the default) picks, for fp16/bf16 CUDA inputs:
  - Hopper and newer (sm90+): PyTorch SDPA with cuDNN attention first in the priority list (then flash, then
    memory-efficient, so shapes cuDNN refuses fall through). On an H100, MicroLlama shape, cuDNN fwd+bwd took
    20.4 ms per step against 31.4 ms for flash (published peer measurements, H100 SXM, torch 2.11).
  - otherwise flash-attn 2 when it imports (GQA natively), else SDPA's own choice (flash on sm80+).
GQA goes through `enable_gqa` without repeating k/v (flash and cuDNN take it natively since torch 2.8).
`repeat_kv=True` repeats k/v to full heads first, for measuring whether a backend is faster that way.
Choose with `set_attention_backend(...)` or the LIT_GPT_ATTENTION / LIT_GPT_ATTENTION_REPEAT_KV env vars.
"""

from __future__ import annotations

import os

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_gpt.ops import flash_attn_func, sdpa

__all__ = ["BACKENDS", "causal_attention", "resolve_backend", "set_attention_backend"]

BACKENDS = ("auto", "cudnn", "flash_attn", "sdpa")
_CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]
_settings = {"backend": os.environ.get("LIT_GPT_ATTENTION", "auto"),
             "repeat_kv": os.environ.get("LIT_GPT_ATTENTION_REPEAT_KV", "0") == "1"}


def set_attention_backend(backend: str = "auto", repeat_kv: bool = False) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "flash_attn" and flash_attn_func is None:
        raise ValueError("attention backend 'flash_attn' needs the flash-attn package (pip install flash-attn)")
    _settings.update(backend=backend, repeat_kv=repeat_kv)


def resolve_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The backend `causal_attention` uses for inputs on this device and dtype."""
    backend = _settings["backend"]
    if backend not in BACKENDS:
        raise ValueError(f"LIT_GPT_ATTENTION={backend!r} is not one of {', '.join(BACKENDS)}")
    half = dtype in (torch.float16, torch.bfloat16)
    if device.type != "cuda" or not half:
        return "sdpa"  # the other kernels take only half precision CUDA tensors
    if backend != "auto":
        return backend
    if torch.cuda.get_device_capability(device)[0] >= 9 and torch.backends.cudnn.is_available():
        return "cudnn"
    return "flash_attn" if flash_attn_func is not None else "sdpa"


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs), causal) v for q (B, T, n_head, hs) and k, v (B, T, n_kv, hs) -> (B, T, n_head, hs)."""
    backend = resolve_backend(q.device, q.dtype)
    if _settings["repeat_kv"] and k.shape[2] != q.shape[2]:
        groups = q.shape[2] // k.shape[2]
        k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    if backend == "flash_attn":
        return flash_attn_func(q, k, v, causal=True)
    if backend == "cudnn":
        with sdpa_kernel(_CUDNN_FIRST, set_priority=True):
            return sdpa(q, k, v)
    return sdpa(q, k, v)
