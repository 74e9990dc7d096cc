"""RMSNorm (optionally fused with the residual add) as Triton kernels, beside the PyTorch reference.

Forward: one program per row, the row held in registers (n_embd <= MAX_COLS), statistics in float32. It stores
1/rms per row for the backward. The result is written straight in the autocast dtype when autocast is on (the
next matmul would cast it anyway), which saves a float32 write and read per norm.
Backward: each program walks a slice of rows and accumulates its partial weight gradient in float32; the partials
are summed by PyTorch. With the residual variant the gradient of the sum output is added in the same pass.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from lit_gpt.kernels.utils import as_rows, autocast_dtype, num_programs, row_warps, unit_stride
from lit_gpt.ops import rms_norm_reference

__all__ = ["rms_norm", "add_rms_norm", "rms_norm_reference", "add_rms_norm_reference"]

# Widest row held in registers without spilling (ptxas, sm80/89/90, tests/test_kernels_compile.py): the backward
# keeps x, dy, w and the dw accumulator per thread and already needs ~128 registers at 8192 with 16 warps; 16384
# spills and 65536 spilled ~10 KB per thread. Wider rows would need a kernel that loops over the row.
MAX_COLS = 8192


@triton.jit
def _rms_norm_fwd_kernel(X, R, S, Y, W, RSTD, stride_x, stride_r, stride_s, stride_y, n_cols, eps,
                         HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        x = x.to(S.dtype.element_ty)  # the sum is materialised in its own dtype, normalise exactly that
        tl.store(S + row * stride_s + cols, x, mask=mask)
        x = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(RSTD + row, rstd)
    # like the reference: normalise in float32, round to the input dtype, then scale
    if HAS_RESIDUAL:
        normed = (x * rstd).to(S.dtype.element_ty).to(tl.float32)
    else:
        normed = (x * rstd).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (normed * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DS, DX, DW_PARTIAL, stride_dy, stride_x, stride_ds, stride_dx,
                         n_rows, n_cols, rows_per_program, HAS_DS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for r in range(row_start, row_end):
        row = tl.cast(r, tl.int64)
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        normed = x * rstd
        dw += dy * normed.to(X.dtype.element_ty).to(tl.float32)
        dn = dy * w
        dx = rstd * (dn - normed * (tl.sum(dn * normed, axis=0) / n_cols))
        if HAS_DS:
            dx += tl.load(DS + row * stride_ds + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.shape[-1] != weight.shape[0] or weight.dim() != 1:
        raise ValueError(f"rms_norm: weight {tuple(weight.shape)} does not match the last dim of x {tuple(x.shape)}")
    if x.shape[-1] > MAX_COLS:
        raise ValueError(f"rms_norm: rows of {x.shape[-1]} > {MAX_COLS} elements are not supported")


@torch.library.custom_op("lit_gpt::rms_norm_fwd", mutates_args=())
def _rms_norm_fwd(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor, eps: float,
                  out_dtype: torch.dtype, sum_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (y, s, rstd): s = x + residual (an empty tensor without residual), rstd per row in float32."""
    shape = x.shape
    x2, weight = as_rows(x), unit_stride(weight)  # the kernels read rows and the weight with unit stride
    n_rows, n_cols = x2.shape
    y = torch.empty(n_rows, n_cols, dtype=out_dtype, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if residual is not None:
        r2 = as_rows(residual)
        s = torch.empty(n_rows, n_cols, dtype=sum_dtype, device=x.device)
    else:
        r2 = s = x2  # unused by the kernel
    block = triton.next_power_of_2(n_cols)
    if n_rows:
        _rms_norm_fwd_kernel[(n_rows,)](
            x2, r2, s, y, weight, rstd, x2.stride(0), r2.stride(0), s.stride(0), y.stride(0), n_cols, eps,
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=row_warps(block))
    s_out = s.view(shape) if residual is not None else x.new_empty(0)
    return y.view(shape), s_out, rstd


@_rms_norm_fwd.register_fake
def _(x, residual, weight, eps, out_dtype, sum_dtype):
    s = x.new_empty(x.shape, dtype=sum_dtype) if residual is not None else x.new_empty(0)
    return x.new_empty(x.shape, dtype=out_dtype), s, x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


@torch.library.custom_op("lit_gpt::rms_norm_bwd", mutates_args=())
def _rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                  ds: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (dx, dweight) given the normalised input x; ds (grad of the residual sum) is added to dx."""
    shape = x.shape
    x2, dy2, weight = as_rows(x), as_rows(dy), unit_stride(weight)
    n_rows, n_cols = x2.shape
    ds2 = as_rows(ds) if ds is not None else dy2
    dx = torch.empty(n_rows, n_cols, dtype=x.dtype, device=x.device)
    grid = num_programs(n_rows, x.device)
    partial = torch.empty(grid, n_cols, dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(n_cols)
    if n_rows:
        _rms_norm_bwd_kernel[(grid,)](
            dy2, x2, weight, rstd, ds2, dx, partial, dy2.stride(0), x2.stride(0), ds2.stride(0), dx.stride(0),
            n_rows, n_cols, triton.cdiv(n_rows, grid), HAS_DS=ds is not None, BLOCK=block,
            num_warps=row_warps(block))
    return dx.view(shape), partial.sum(0).to(weight.dtype)


@_rms_norm_bwd.register_fake
def _(dy, x, weight, rstd, ds):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _setup(ctx, inputs, output):
    x, residual, weight, _, _, _ = inputs
    _, s, rstd = output
    ctx.has_residual = residual is not None
    if ctx.has_residual:
        ctx.dtypes = (x.dtype, residual.dtype)
    ctx.save_for_backward(s if ctx.has_residual else x, weight, rstd)


def _backward(ctx, dy, ds, _drstd):
    normed_input, weight, rstd = ctx.saved_tensors
    if not ctx.has_residual:
        ds = None
    dx, dw = _rms_norm_bwd(dy, normed_input, weight, rstd, ds)
    if not ctx.has_residual:
        return dx, None, dw, None, None, None
    x_dtype, r_dtype = ctx.dtypes
    return dx.to(x_dtype), dx.to(r_dtype), dw, None, None, None


torch.library.register_autograd("lit_gpt::rms_norm_fwd", _backward, setup_context=_setup)


def _out_dtype(x: torch.Tensor, in_dtype: torch.dtype, weight: torch.Tensor) -> torch.dtype:
    return autocast_dtype(x.device.type) or torch.promote_types(in_dtype, weight.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim (same math as `rms_norm_reference`); returns the autocast dtype under autocast."""
    _check(x, weight)
    return _rms_norm_fwd(x, None, weight, eps, _out_dtype(x, x.dtype, weight), x.dtype)[0]


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """Fused `s = x + residual; y = rms_norm(s)`. Returns (y, s): one read of each input instead of three."""
    _check(x, weight)
    if x.shape != residual.shape:
        raise ValueError(f"add_rms_norm: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
    sum_dtype = torch.promote_types(x.dtype, residual.dtype)
    y, s, _ = _rms_norm_fwd(x, residual, weight, eps, _out_dtype(x, sum_dtype, weight), sum_dtype)
    return y, s


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    s = x + residual
    return rms_norm_reference(s, weight, eps), s
