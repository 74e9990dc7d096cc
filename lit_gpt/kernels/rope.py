"""RoPE on q and k in one Triton kernel (half-rotation layout), beside the PyTorch reference.

One program per (batch, position): it loads that position's cos/sin once and rotates every q head and every k head
(any head counts, GQA included). q and k may be strided views split off the fused qkv projection; outputs are
fresh contiguous tensors, or the inputs themselves with `inplace=True` when no gradient is needed (generation).
The backward is the same rotation by the negative angle, run by the same kernel.

With x = [x1, x2] (halves of the head dim) and the tables split the same way:
  y1 = x1 * cos1 - x2 * sin1,  y2 = x2 * cos2 + x1 * sin2
  dx1 = dy1 * cos1 + dy2 * sin2,  dx2 = dy2 * cos2 - dy1 * sin1
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lit_gpt.kernels.utils import unit_stride
from lit_gpt.ops import apply_rope_reference

__all__ = ["apply_rope", "apply_rope_reference"]


@triton.jit
def _rotate_heads(X, Y, sx_h, sy_h, n_heads, c1, c2, s1, s2, BACKWARD: tl.constexpr, HALF: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < n_heads) & (d < HALF)
    x1 = tl.load(X + h * sx_h + d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(X + h * sx_h + HALF + d, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    tl.store(Y + h * sy_h + d, y1.to(Y.dtype.element_ty), mask=mask)
    tl.store(Y + h * sy_h + HALF + d, y2.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(Q, K, QO, KO, COS, SIN, T, n_q, n_k,
                 sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sqo_b, sqo_t, sqo_h, sko_b, sko_t, sko_h, sc_t, ss_t,
                 BACKWARD: tl.constexpr, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // T
    t = pid % T
    d = tl.arange(0, BLOCK_D)[None, :]
    dmask = d < HALF
    c1 = tl.load(COS + t * sc_t + d, mask=dmask, other=0.0)
    c2 = tl.load(COS + t * sc_t + HALF + d, mask=dmask, other=0.0)
    s1 = tl.load(SIN + t * ss_t + d, mask=dmask, other=0.0)
    s2 = tl.load(SIN + t * ss_t + HALF + d, mask=dmask, other=0.0)
    _rotate_heads(Q + b * sq_b + t * sq_t, QO + b * sqo_b + t * sqo_t, sq_h, sqo_h, n_q, c1, c2, s1, s2,
                  BACKWARD, HALF, BLOCK_HQ, BLOCK_D)
    _rotate_heads(K + b * sk_b + t * sk_t, KO + b * sko_b + t * sko_t, sk_h, sko_h, n_k, c1, c2, s1, s2,
                  BACKWARD, HALF, BLOCK_HK, BLOCK_D)


def _launch(q, k, q_out, k_out, cos, sin, backward: bool) -> None:
    B, T, n_q, hs = q.shape
    n_k = k.shape[2]
    if B * T == 0:
        return
    half = hs // 2
    block_hq, block_hk = triton.next_power_of_2(n_q), triton.next_power_of_2(n_k)
    block_d = triton.next_power_of_2(half)
    warps = 4 if block_hq * block_d <= 1024 else 8
    _rope_kernel[(B * T,)](
        q, k, q_out, k_out, cos, sin, T, n_q, n_k,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        q_out.stride(0), q_out.stride(1), q_out.stride(2), k_out.stride(0), k_out.stride(1), k_out.stride(2),
        cos.stride(0), sin.stride(0),
        BACKWARD=backward, HALF=half, BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_D=block_d, num_warps=warps)


@torch.library.custom_op("lit_gpt::rope", mutates_args=())
def _rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
          backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = unit_stride(q), unit_stride(k)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    _launch(q, k, q_out, k_out, cos, sin, backward)
    return q_out, k_out


@_rope.register_fake
def _(q, k, cos, sin, backward):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _setup(ctx, inputs, output):
    _, _, cos, sin, backward = inputs
    ctx.save_for_backward(cos, sin)
    ctx.backward = backward


def _backward(ctx, dq, dk):
    cos, sin = ctx.saved_tensors
    dq, dk = _rope(dq, dk, cos, sin, not ctx.backward)
    return dq, dk, None, None, None


torch.library.register_autograd("lit_gpt::rope", _backward, setup_context=_setup)


def _writable(t: torch.Tensor) -> bool:
    """Whether the kernel can rotate `t` in place: unit stride in the head dim and no element shared by two
    positions (an expanded view, stride 0, would be rotated once per position that sees it)."""
    return t.stride(-1) == 1 and all(st or n == 1 for n, st in zip(t.shape, t.stride()))


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inplace: bool = False):
    """Rotates q (B, T, n_head, hs) and k (B, T, n_kv, hs) by cos/sin (T, hs) (float32, half-rotation layout).

    Same math as `apply_rope_reference` (float32 internally). `inplace=True` overwrites q and k when no gradient
    is needed (ignored otherwise, and for expanded or strided-head-dim q and k: then the results are new tensors)."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"apply_rope: q {tuple(q.shape)} and k {tuple(k.shape)} must be (B, T, heads, hs)")
    T, hs = q.shape[1], q.shape[3]
    if hs % 2 or cos.shape != (T, hs) or sin.shape != (T, hs):
        raise ValueError(f"apply_rope: cos/sin {tuple(cos.shape)} must be (T, hs) = ({T}, {hs}) with hs even")
    cos, sin = unit_stride(cos.float()), unit_stride(sin.float())
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    if inplace and not needs_grad and not torch.compiler.is_compiling() and _writable(q) and _writable(k):
        # each program reads its elements before writing them, so in and out may be the same memory
        _launch(q, k, q, k, cos, sin, backward=False)
        return q, k
    return _rope(q, k, cos, sin, False)
