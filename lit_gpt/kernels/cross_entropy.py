"""Fused lm_head + cross-entropy: the logits are computed and consumed one chunk of rows at a time, so the full
(tokens x vocab) float32 logits tensor never exists (32768 x 32000 fp32 is 4 GiB, plus as much for its gradient).

Per chunk: logits = x_chunk @ W^T in the compute dtype (bf16 under autocast, like the reference matmul); a Triton
kernel computes each row's log-sum-exp in float32 (online over vocab blocks), the loss, and overwrites the logits
with their gradient softmax - onehot (+ the z-loss term); two matmuls turn that into this chunk's grad of x and
its contribution to grad of W (accumulated in float32). The gradients are therefore made in the forward pass
and the backward only scales them by grad_output / n_valid. `ignore_index` rows add no loss and no gradient.

loss = mean over valid rows of (lse - logit[target] + z_loss * lse^2)
d/dlogit_j = softmax_j * (1 + 2 * z_loss * lse) - [j == target]
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from lit_gpt.kernels.utils import autocast_dtype, unit_stride

__all__ = ["linear_cross_entropy", "linear_cross_entropy_reference"]

CHUNK_BYTES = 256 * 2**20  # logits of one chunk: 4096 rows x 32000 vocab in bf16


@triton.jit
def _cross_entropy_kernel(LOGITS, TARGETS, LOSS, stride_row, n_cols, ignore_index, z_loss,
                          WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ptr = LOGITS + row * stride_row
    target = tl.load(TARGETS + row).to(tl.int64)
    valid = target != ignore_index
    in_range = (target >= 0) & (target < n_cols)  # asserted by the caller; else no stray read and a NaN loss
    # pass 1: running max and sum of exp
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.full((), 0.0, tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(ptr + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    x_target = tl.load(ptr + tl.where(valid & in_range, target, 0), mask=in_range | ~valid,
                       other=float("nan")).to(tl.float32)
    loss = lse - x_target + z_loss * lse * lse
    tl.store(LOSS + row, tl.where(valid, loss, 0.0))
    if WRITE_GRAD:
        # pass 2: overwrite the logits with d loss_row / d logits
        scale = 1.0 + 2.0 * z_loss * lse
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)
            grad = tl.exp(x - lse) * scale - tl.where(cols == target, 1.0, 0.0)
            grad = tl.where(valid, grad, 0.0)
            tl.store(ptr + cols, grad.to(LOGITS.dtype.element_ty), mask=mask)


def _chunk_rows(n_rows: int, vocab: int, itemsize: int) -> int:
    rows = max(1, CHUNK_BYTES // max(1, vocab * itemsize))
    return min(n_rows, 1 << (rows.bit_length() - 1))  # a power of two keeps the GEMM shapes friendly


@torch.library.custom_op("lit_gpt::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                          z_loss: float, chunk_size: int, compute_dtype: torch.dtype, need_grad_x: bool,
                          need_grad_w: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss sum, n_valid, grad_x sum, grad_w sum); the gradients are of the *summed* loss (empty when
    not needed). Autocast is off inside: the dtypes are decided by the caller through `compute_dtype`."""
    n_rows, _ = x.shape
    vocab = weight.shape[0]
    targets = targets.contiguous()  # the kernel reads targets[row] densely (a strided or expanded view would not)
    valid = targets != ignore_index
    # Like F.cross_entropy on CUDA: a device-side assert ("device-side assert triggered" at the next sync), so the
    # check costs a few tiny kernels and no host-device sync (an .item() here would stall the CPU's launches every
    # step); on CPU tensors it raises this message at once. The trainer checks token ids on the host, before.
    torch._assert_async((((targets >= 0) & (targets < vocab)) | ~valid).all(),
                        f"linear_cross_entropy: a target is outside [0, {vocab}) and is not ignore_index "
                        f"{ignore_index}")
    with torch.autocast(x.device.type, enabled=False):
        xc, wc = x.to(compute_dtype), weight.to(compute_dtype)
        loss_rows = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_grad_x else x.new_empty(0)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_grad_w else x.new_empty(0)
        chunk = chunk_size if chunk_size > 0 else _chunk_rows(n_rows, vocab, xc.element_size())
        block = min(4096, triton.next_power_of_2(vocab))
        for start in range(0, n_rows, chunk):
            end = min(start + chunk, n_rows)
            x_chunk = xc[start:end]
            logits = unit_stride(x_chunk @ wc.t())  # (rows, vocab), becomes the gradient in place
            _cross_entropy_kernel[(end - start,)](
                logits, targets[start:end], loss_rows[start:end], logits.stride(0), vocab, ignore_index, z_loss,
                WRITE_GRAD=need_grad_x or need_grad_w, BLOCK=block, num_warps=8 if block >= 2048 else 4)
            if need_grad_x:
                if grad_x.dtype == compute_dtype:
                    torch.mm(logits, wc, out=grad_x[start:end])
                else:
                    grad_x[start:end] = logits @ wc
            if need_grad_w:
                if compute_dtype == torch.float32:
                    grad_w.addmm_(logits.t(), x_chunk)
                else:  # accumulate the chunks in float32: one bf16 rounding per chunk, not per running sum
                    grad_w += logits.t() @ x_chunk
        n_valid = valid.sum()
        grad_w = grad_w.to(weight.dtype) if need_grad_w else grad_w
        return loss_rows.sum(), n_valid, grad_x, grad_w


@_linear_cross_entropy.register_fake
def _(x, weight, targets, ignore_index, z_loss, chunk_size, compute_dtype, need_grad_x, need_grad_w):
    grad_x = x.new_empty(x.shape) if need_grad_x else x.new_empty(0)
    grad_w = weight.new_empty(weight.shape) if need_grad_w else x.new_empty(0)
    return x.new_empty((), dtype=torch.float32), targets.new_empty((), dtype=torch.int64), grad_x, grad_w


def _setup(ctx, inputs, output):
    _, n_valid, grad_x, grad_w = output
    ctx.save_for_backward(n_valid, grad_x, grad_w)
    ctx.need = inputs[7], inputs[8]


def _backward(ctx, d_loss_sum, _d_n_valid, _d_grad_x, _d_grad_w):
    n_valid, grad_x, grad_w = ctx.saved_tensors
    need_x, need_w = ctx.need
    return (grad_x * d_loss_sum.to(grad_x.dtype) if need_x else None,
            grad_w * d_loss_sum.to(grad_w.dtype) if need_w else None,
            None, None, None, None, None, None, None)


torch.library.register_autograd("lit_gpt::linear_cross_entropy", _backward, setup_context=_setup)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                         z_loss: float = 0.0, chunk_size: Optional[int] = None) -> torch.Tensor:
    """Mean cross-entropy of `x @ weight.T` (x (N, C), weight (V, C), targets (N,)) over targets != ignore_index,
    plus `z_loss * lse^2` per row, without holding the (N, V) logits. Matmuls run in the autocast dtype when
    autocast is on; softmax math is float32. `chunk_size` rows per chunk (default: ~256 MiB of logits)."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1] or targets.shape != (x.shape[0],):
        raise ValueError(f"linear_cross_entropy: need x (N, C), weight (V, C), targets (N,); got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"linear_cross_entropy: targets must be integer class ids, got {targets.dtype}")
    compute_dtype = autocast_dtype(x.device.type) or torch.promote_types(x.dtype, weight.dtype)
    grad_on = torch.is_grad_enabled()
    loss_sum, n_valid, _, _ = _linear_cross_entropy(
        x, weight, targets, ignore_index, float(z_loss), chunk_size or 0, compute_dtype,
        grad_on and x.requires_grad, grad_on and weight.requires_grad)
    return loss_sum / n_valid  # like F.cross_entropy: NaN when every target is ignored


def linear_cross_entropy_reference(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100, z_loss: float = 0.0) -> torch.Tensor:
    """The same loss through full float32 logits (what `GPT.loss_from_hidden` does without kernels)."""
    logits = (x @ weight.t()).float()
    lse = torch.logsumexp(logits, dim=-1)
    valid = targets != ignore_index
    target_logit = logits.gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1)
    per_row = torch.where(valid, lse - target_logit + z_loss * lse * lse, 0.0)
    return per_row.sum() / valid.sum()
