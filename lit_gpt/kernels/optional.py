"""The optional third-party accelerators, imported on first use (none is needed): flash-attn 2 (`flash_attn`),
flash-attn 3 for Hopper (`flash_attn_interface`) and xformers (`xformers.ops`).

Each attention loader returns a function in this project's layout, q (B, T, n_head, hs) and k, v (B, T, n_kv, hs)
-> causal attention (B, T, n_head, hs), or raises `Unavailable` saying why not in one line: not installed, or
installed with a compiled part that does not load against this torch (xformers then imports fine, logs a
multi-line warning and fails at the first call; here that becomes the one-line reason).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import warnings
from typing import Callable, Optional

import torch

__all__ = ["ATTENTION_PACKAGES", "Unavailable", "installed", "load_attention", "xformers_swiglu"]

# backend -> (module imported, what to install)
ATTENTION_PACKAGES = {
    "flash_attn": ("flash_attn", "flash-attn 2 (pip install 'lit_gpt[flash]')"),
    "flash_attn3": ("flash_attn_interface", "flash-attn 3 (built from flash-attention's hopper/ folder)"),
    "xformers": ("xformers", "xformers (pip install 'lit_gpt[xformers]')"),
}


class Unavailable(Exception):
    """An optional accelerator that cannot run here; str(e) says why in one line."""


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


def installed(module: str) -> bool:
    """Whether the top-level package of `module` is there (found, not imported: importing xformers takes seconds)."""
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _import(module: str, what: str):
    if not installed(module):
        raise Unavailable(f"{what.split(' (')[0]} is not installed")
    logger = logging.getLogger(module.split(".")[0])
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # xformers logs a multi-line warning when its compiled part fails to load
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except (ImportError, OSError) as e:  # a compiled part built against another torch: undefined symbols
        raise Unavailable(f"{module} does not import: {first_line(e)}") from None
    finally:
        logger.setLevel(level)


_loaded: dict[str, Callable] = {}  # a plain dict, not lru_cache: torch.compile traces a lookup in it, no import


def load_attention(backend: str) -> Callable:
    """The attention function of an optional backend ("flash_attn", "flash_attn3", "xformers"); raises Unavailable."""
    if backend not in _loaded:
        _loaded[backend] = _load_attention(backend)
    return _loaded[backend]


def _load_attention(backend: str) -> Callable:
    module, what = ATTENTION_PACKAGES[backend]
    lib = _import(module, what)
    if backend == "flash_attn":
        return functools.partial(lib.flash_attn_func, causal=True)  # GQA natively
    if backend == "flash_attn3":
        def flash3(q, k, v):  # GQA natively; some releases return (out, softmax_lse)
            out = lib.flash_attn_func(q, k, v, causal=True)
            return out[0] if isinstance(out, tuple) else out
        return flash3
    problem = _xformers_compiled_problem(lib)
    if problem:
        raise Unavailable(problem)
    fmha = _import("xformers.ops.fmha", what)
    return functools.partial(_xformers_attention, fmha.memory_efficient_attention, fmha.LowerTriangularMask())


def _xformers_compiled_problem(xformers) -> Optional[str]:
    """Why xformers' compiled part did not load, or None when it did (xformers._has_cpp_library)."""
    if getattr(xformers, "_has_cpp_library", True):
        return None
    exc = getattr(getattr(xformers, "_cpp_lib", None), "_cpp_library_load_exception", None)
    built = getattr(getattr(exc, "build_info", None), "torch_version", None)
    cause = exc
    while getattr(cause, "__cause__", None) is not None:  # the innermost: e.g. a CUDA runtime library missing
        cause = cause.__cause__
    return (f"xformers {getattr(xformers, '__version__', '?')}'s compiled part does not load"
            + (f" (built for torch {built}, this is torch {torch.__version__})" if built else "")
            + (f": {first_line(cause)}" if cause is not None else ""))


def _xformers_attention(attend, causal_mask, q, k, v):
    """xformers takes grouped heads as 5-D (B, T, groups, heads per group, hs) with k/v broadcast along the heads
    of a group (a stride-0 expand, no copy), but only in the forward pass: its backward operators take full heads,
    so with gradients k/v are repeated."""
    B, T, H, D = q.shape
    G = k.shape[2]
    if G == H:
        return attend(q, k, v, attn_bias=causal_mask)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        k, v = (t.repeat_interleave(H // G, dim=2) for t in (k, v))
        return attend(q, k, v, attn_bias=causal_mask)
    k, v = (t[:, :, :, None].expand(B, T, G, H // G, D) for t in (k, v))
    return attend(q.reshape(B, T, G, H // G, D), k, v, attn_bias=causal_mask).reshape(B, T, H, D)


def xformers_swiglu() -> Callable:
    """xformers.ops.swiglu(x, w1, b1, w2, b2, w3, b3): the whole SwiGLU MLP, down(silu(x w1^T) * (x w2^T)).
    It runs without xformers' compiled part too (in 0.0.35 its dispatcher only has the eager op)."""
    if "swiglu" not in _loaded:
        _loaded["swiglu"] = _import("xformers.ops", ATTENTION_PACKAGES["xformers"][1]).swiglu
    return _loaded["swiglu"]
