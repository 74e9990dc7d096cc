"""SwiGLU's elementwise part, silu(gate) * up, as Triton kernels beside the PyTorch reference.

`swiglu_packed(h)` takes the fused gate_up projection output (gate columns first) and its backward writes the
gradient of both halves into one (..., 2 * I) tensor, so autograd need not concatenate two gradients (a full
extra read and write of the widest activation in the model). `swiglu(gate, up)` takes the halves separately.
Math in float32: with s = sigmoid(g), d silu(g) / dg = s * (1 + g * (1 - s)).

The model's MLP uses these ("triton", the default) unless LIT_GPT_SWIGLU=xformers (or `set_swiglu_backend`) hands
the whole MLP to xformers.ops.swiglu (`xformers_mlp`), for measuring it against them (benchmarks/kernels.py).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lit_gpt.kernels.optional import ATTENTION_PACKAGES, installed, xformers_swiglu
from lit_gpt.kernels.utils import as_rows

__all__ = ["SWIGLU_BACKENDS", "check_swiglu_backend", "describe_swiglu", "set_swiglu_backend", "swiglu",
           "swiglu_backend", "swiglu_packed", "swiglu_reference", "xformers_mlp"]

SWIGLU_BACKENDS = ("triton", "xformers")
_settings = {"backend": os.environ.get("LIT_GPT_SWIGLU", "triton")}

BLOCK = 1024


@triton.jit
def _swiglu_fwd_kernel(G, U, Y, stride_g, stride_u, stride_y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    y = g * tl.sigmoid(g) * u
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(DY, G, U, DG, DU, stride_dy, stride_g, stride_u, stride_dg, stride_du, n_cols,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    dg = dy * u * s * (1.0 + g * (1.0 - s))
    du = dy * g * s
    tl.store(DG + row * stride_dg + cols, dg.to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + row * stride_du + cols, du.to(DU.dtype.element_ty), mask=mask)


def _grid(n_rows: int, n_cols: int) -> tuple[int, int]:
    return n_rows, triton.cdiv(n_cols, BLOCK)


def _forward(g2: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    n_rows, n_cols = g2.shape
    y = torch.empty(n_rows, n_cols, dtype=g2.dtype, device=g2.device)
    if y.numel():
        _swiglu_fwd_kernel[_grid(n_rows, n_cols)](g2, u2, y, g2.stride(0), u2.stride(0), y.stride(0), n_cols,
                                                  BLOCK=BLOCK, num_warps=4)
    return y


def _backward(dy2, g2, u2, dg, du) -> None:
    n_rows, n_cols = g2.shape
    if dy2.numel():
        _swiglu_bwd_kernel[_grid(n_rows, n_cols)](dy2, g2, u2, dg, du, dy2.stride(0), g2.stride(0), u2.stride(0),
                                                  dg.stride(0), du.stride(0), n_cols, BLOCK=BLOCK, num_warps=4)


# ---- separate gate and up ---------------------------------------------------------------------------------
@torch.library.custom_op("lit_gpt::swiglu", mutates_args=())
def _swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _forward(as_rows(gate), as_rows(up)).view(gate.shape)


@_swiglu.register_fake
def _(gate, up):
    return gate.new_empty(gate.shape)


@torch.library.custom_op("lit_gpt::swiglu_bwd", mutates_args=())
def _swiglu_bwd(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g2 = as_rows(gate)
    dg = torch.empty(g2.shape, dtype=gate.dtype, device=gate.device)
    du = torch.empty(g2.shape, dtype=up.dtype, device=up.device)
    _backward(as_rows(dy), g2, as_rows(up), dg, du)
    return dg.view(gate.shape), du.view(up.shape)


@_swiglu_bwd.register_fake
def _(dy, gate, up):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _swiglu_backward(ctx, dy):
    return _swiglu_bwd(dy, *ctx.saved_tensors)


torch.library.register_autograd("lit_gpt::swiglu", _swiglu_backward, setup_context=_setup)


# ---- packed [gate | up] -----------------------------------------------------------------------------------
@torch.library.custom_op("lit_gpt::swiglu_packed", mutates_args=())
def _swiglu_packed(h: torch.Tensor) -> torch.Tensor:
    h2 = as_rows(h)
    n = h2.shape[1] // 2
    return _forward(h2[:, :n], h2[:, n:]).view(*h.shape[:-1], n)


@_swiglu_packed.register_fake
def _(h):
    return h.new_empty(*h.shape[:-1], h.shape[-1] // 2)


@torch.library.custom_op("lit_gpt::swiglu_packed_bwd", mutates_args=())
def _swiglu_packed_bwd(dy: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    h2 = as_rows(h)
    n = h2.shape[1] // 2
    dh = torch.empty(h2.shape, dtype=h.dtype, device=h.device)
    _backward(as_rows(dy), h2[:, :n], h2[:, n:], dh[:, :n], dh[:, n:])
    return dh.view(h.shape)


@_swiglu_packed_bwd.register_fake
def _(dy, h):
    return h.new_empty(h.shape)


def _packed_backward(ctx, dy):
    return _swiglu_packed_bwd(dy, *ctx.saved_tensors)


torch.library.register_autograd("lit_gpt::swiglu_packed", _packed_backward, setup_context=_setup)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for same-shaped gate and up (strided views fine)."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    return _swiglu(gate, up)


def swiglu_packed(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up where h = [gate | up] along the last dim (the fused gate_up projection output)."""
    if h.shape[-1] % 2:
        raise ValueError(f"swiglu_packed: last dim {h.shape[-1]} is not even")
    return _swiglu_packed(h)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


# ---- which SwiGLU the model's MLP uses ----------------------------------------------------------------------------
def check_swiglu_backend(backend: str) -> None:
    """Raises ValueError (one line) for an unknown SwiGLU backend or xformers chosen without xformers installed."""
    if backend not in SWIGLU_BACKENDS:
        raise ValueError(f"unknown SwiGLU backend {backend!r} (LIT_GPT_SWIGLU); choose one of "
                         f"{', '.join(SWIGLU_BACKENDS)}")
    if backend == "xformers" and not installed("xformers"):
        raise ValueError(f"SwiGLU backend 'xformers' needs {ATTENTION_PACKAGES['xformers'][1]}")


def set_swiglu_backend(backend: str = "triton") -> None:
    check_swiglu_backend(backend)
    _settings["backend"] = backend


def swiglu_backend() -> str:
    """The SwiGLU the model's MLP uses with kernels on (LIT_GPT_SWIGLU is checked at start-up: check_swiglu_backend)."""
    return _settings["backend"]


def describe_swiglu() -> str:
    """One line for the start-up print, e.g. "SwiGLU: triton"; loads xformers' op when it is the one chosen."""
    backend = swiglu_backend()
    check_swiglu_backend(backend)
    if backend == "xformers":
        xformers_swiglu()  # imported here, before a compiled step could trace the import
    return f"SwiGLU: {backend}"


def xformers_mlp(x: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
    """down(silu(x gate^T) * (x up^T)) in xformers.ops.swiglu; gate and up are views of the one fused weight, so
    xformers sees them packed."""
    gate, up = gate_up_weight.chunk(2)
    return xformers_swiglu()(x, gate, None, up, None, down_weight, None)
