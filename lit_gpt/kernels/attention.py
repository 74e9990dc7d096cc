"""Causal self-attention on (B, T, heads, hs) tensors through the fastest backend the device offers.

Backends: "cudnn" (PyTorch SDPA with cuDNN attention first in its priority list, then flash, then memory-efficient,
so shapes cuDNN refuses fall through), "sdpa" (SDPA's own choice), and the optional packages of
`lit_gpt.kernels.optional`: "flash_attn" (flash-attn 2), "flash_attn3" (flash-attn 3, Hopper) and "xformers"
(memory-efficient attention). GQA goes without repeating k/v wherever the backend takes it (SDPA via `enable_gqa`,
flash-attn 2 and 3 natively, xformers in the forward pass only).

"auto" (the default) picks the fastest measured on the device, for fp16/bf16 CUDA inputs:
  - Hopper and newer (sm90+): cuDNN. On an H100, MicroLlama shape, cuDNN fwd+bwd took 20.4 ms per step against
    31.4 ms for flash (published peer measurements, H100 SXM, torch 2.11).
  - otherwise flash-attn 2 when it works here, else SDPA (flash on sm80+).
flash_attn3 and xformers are not picked by auto until a GPU run measures them faster (benchmarks/kernels.py and
benchmarks/train_throughput.py have their rows); choose them with LIT_GPT_ATTENTION. Any other input (CPU, float32)
takes SDPA.

An optional backend is checked once per device before its first use: it must import and pass a tiny fwd+bwd
probe against SDPA. One that fails (e.g. xformers whose compiled part was built for another torch) is replaced by
auto's choice, and one line says which backend runs and why (`describe_attention`; the trainer prints it at
start-up). Choosing a backend whose package is not installed at all is an error.
Choose with `set_attention_backend(...)` or the LIT_GPT_ATTENTION / LIT_GPT_ATTENTION_REPEAT_KV env vars;
`repeat_kv=True` repeats k/v to full heads first, for measuring whether a backend is faster that way.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_gpt.kernels.optional import ATTENTION_PACKAGES, Unavailable, first_line, installed, load_attention
from lit_gpt.ops import sdpa

__all__ = ["BACKENDS", "backend_function", "causal_attention", "check_backend", "describe_attention",
           "resolve_backend", "set_attention_backend", "why_unusable"]

BACKENDS = ("auto", "cudnn", "flash_attn", "flash_attn3", "xformers", "sdpa")
_CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]
_settings = {"backend": os.environ.get("LIT_GPT_ATTENTION", "auto"),
             "repeat_kv": os.environ.get("LIT_GPT_ATTENTION_REPEAT_KV", "0") == "1"}
_chosen: dict[tuple, tuple[str, str]] = {}  # (device type, index, dtype) -> (backend, why)
_unusable: dict[tuple, Optional[str]] = {}  # (backend, device type, index, dtype) -> why not, None when usable
log = logging.getLogger(__name__)


def check_backend(backend: str) -> None:
    """Raises ValueError (one line) for a backend name that is unknown or whose package is not installed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r} (LIT_GPT_ATTENTION); choose one of "
                         f"{', '.join(BACKENDS)}")
    if backend in ATTENTION_PACKAGES and not installed(ATTENTION_PACKAGES[backend][0]):
        raise ValueError(f"attention backend {backend!r} needs {ATTENTION_PACKAGES[backend][1]}")


def set_attention_backend(backend: str = "auto", repeat_kv: bool = False) -> None:
    check_backend(backend)
    _settings.update(backend=backend, repeat_kv=repeat_kv)
    _chosen.clear()


def resolve_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The backend `causal_attention` uses for inputs on this device and dtype."""
    return _select(device, dtype)[0]


def describe_attention(device: torch.device, dtype: torch.dtype) -> str:
    """One line, e.g. "attention: cudnn (auto on sm90)", deciding the backend (the probes run here, once)."""
    backend, why = _select(device, dtype, report=False)
    return f"attention: {backend} ({why})"


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs), causal) v for q (B, T, n_head, hs) and k, v (B, T, n_kv, hs) -> (B, T, n_head, hs)."""
    backend = resolve_backend(q.device, q.dtype)
    if _settings["repeat_kv"] and k.shape[2] != q.shape[2]:
        groups = q.shape[2] // k.shape[2]
        k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    return backend_function(backend)(q, k, v)


def backend_function(backend: str) -> Callable:
    """The attention function of one backend (not "auto"), for calling it directly (benchmarks/kernels.py)."""
    if backend in ATTENTION_PACKAGES:
        return load_attention(backend)
    return _cudnn_first if backend == "cudnn" else sdpa


def _cudnn_first(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel(_CUDNN_FIRST, set_priority=True):
        return sdpa(q, k, v)


# ---- choosing ---------------------------------------------------------------------------------------------------
def _key(device: torch.device, dtype: torch.dtype) -> tuple:
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return device.type, index, dtype


def _select(device: torch.device, dtype: torch.dtype, report: bool = True) -> tuple[str, str]:
    """(backend, why), decided once per device and dtype (a dict lookup afterwards, also under torch.compile).
    A fallback decided here, outside `describe_attention`, is logged: the one line saying so."""
    key = _key(device, dtype)
    if key not in _chosen:
        _chosen[key] = _decide(device, dtype)
        if report and "unusable" in _chosen[key][1]:
            log.warning("attention: %s (%s)", *_chosen[key])
    return _chosen[key]


@torch.compiler.disable  # runs kernels (the probes): never traced, and cached before a compiled step needs it
def _decide(device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    requested = _settings["backend"]
    check_backend(requested)
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return "sdpa", f"{device.type} {str(dtype).replace('torch.', '')}: the other backends take half precision CUDA"
    major, minor = torch.cuda.get_device_capability(device)
    sm = f"sm{major}{minor}"
    notes = []
    if requested != "auto":
        why = why_unusable(requested, device, dtype)
        if why is None:
            return requested, f"chosen on {sm}"
        notes.append(f"{requested} unusable: {why}")
    if major >= 9 and torch.backends.cudnn.is_available():
        auto = "cudnn"
    else:
        flash_problem = why_unusable("flash_attn", device, dtype)
        auto = "flash_attn" if flash_problem is None else "sdpa"
        if flash_problem is not None and installed(ATTENTION_PACKAGES["flash_attn"][0]) and requested == "auto":
            notes.append(f"flash_attn unusable: {flash_problem}")
    return auto, "; ".join([f"auto on {sm}"] + notes)


def why_unusable(backend: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when the backend runs on this device and dtype, else why not in one line (cached)."""
    if backend == "sdpa":
        return None
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return "takes half precision CUDA tensors only"
    if backend == "cudnn":
        return None if torch.backends.cudnn.is_available() else "cuDNN is not available in this torch"
    key = (backend, *_key(device, dtype))
    if key not in _unusable:
        try:
            probe(load_attention(backend), device, dtype)
            _unusable[key] = None
        except Unavailable as e:
            _unusable[key] = str(e)
        except Exception as e:  # the first call failing: a kernel missing for this GPU, dtype or torch
            _unusable[key] = f"its first call failed: {first_line(e)}"
    return _unusable[key]


def probe(attend, device: torch.device, dtype: torch.dtype) -> None:
    """A tiny causal fwd+bwd (GQA 4 heads on 2, T=5, hs=64) against SDPA; raises when `attend` fails or is wrong."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5, h, 64, generator=gen).to(device, dtype).requires_grad_() for h in (4, 2, 2))
    y = attend(q, k, v)
    y.float().square().sum().backward()
    expected = sdpa(q.detach().float(), k.detach().float(), v.detach().float())
    err = float((y.detach().float() - expected).abs().max())
    if not err < 5e-2 or any(t.grad is None or not torch.isfinite(t.grad).all() for t in (q, k, v)):
        raise RuntimeError(f"the probe's output differs from SDPA's by {err:.3g}, or its gradients are missing")
