"""The Llama-style decoder: embedding -> Blocks (RMSNorm, GQA attention with RoPE, RMSNorm, SwiGLU) -> norm -> lm_head.

Weight layout: q/k/v live in one fused `attn.qkv` linear (rows ordered q heads, k heads, v heads) and gate/up in
one fused `mlp.gate_up` linear (gate rows first), so each is a single GEMM. `lit_gpt.convert` maps these to and
from Hugging Face's separate projections.

Initialisation (`GPT.reset_parameters`): every linear and embedding weight ~ N(0, init_std); the two projections
that write into the residual stream (`attn.proj`, `mlp.down`) use init_std / sqrt(2 * n_layer) so the residual
variance stays O(1) with depth (GPT-2); norm weights are 1.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt.config import Config
from lit_gpt.ops import apply_rope_reference, kernels_supported, rms_norm_reference, rope_at, sdpa


class GPT(nn.Module):
    def __init__(self, config: Config, kernels: bool = False) -> None:
        """`kernels=True` routes RMSNorm, RoPE, SwiGLU and the loss through the fused Triton kernels in
        `lit_gpt.kernels` (on CUDA tensors; CPU tensors take the PyTorch reference path unless TRITON_INTERPRET=1)."""
        super().__init__()
        self.config = config
        self.kernels = kernels
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()
        self.set_kernels(kernels)

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or "_norm." in name:
                nn.init.ones_(p)
            elif name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def set_kernels(self, enabled: bool) -> None:
        self.kernels = enabled
        self.norm.kernels = enabled
        for block in self.blocks:
            block.set_kernels(enabled)

    # ---- forward --------------------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        targets: Optional[torch.Tensor] = None,
        input_pos: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
    ) -> torch.Tensor:
        """idx: (B, T) token ids. Returns logits (B, T, vocab), or the mean cross-entropy over targets != ignore_index
        when `targets` is given (then the float32 logits are never held whole with kernels enabled).
        `input_pos` (T,) selects the KV cache path used for generation (see `set_kv_cache`)."""
        B, T = idx.shape
        if input_pos is None and T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        positions = torch.arange(T, device=idx.device) if input_pos is None else input_pos
        # Computed per call (a few tiny kernels) rather than cached on the module: no state for torch.compile to
        # guard on (a cache filled on the first call made it recompile the whole model on the second).
        cos, sin = rope_at(positions, self.config.head_size, self.config.rope_base)
        x = self.embed(idx)
        # Each Block returns its MLP output unadded: the next norm adds it to the residual stream in the same pass
        # (one fused kernel with kernels on). The first Block gets zeros made from x (so they require grad exactly
        # when the later deltas do) in the dtype the MLP outputs (autocast's): every Block sees the same kind of
        # inputs, so torch.compile makes one graph for all of them.
        mlp_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        delta = x.to(mlp_dtype) * 0
        for block in self.blocks:
            x, delta = block(x, delta, cos, sin, input_pos)
        x, _ = self.norm.add_and_norm(delta, x)
        if targets is None:
            return self.lm_head(x)
        return self.loss_from_hidden(x, targets, ignore_index)

    def loss_from_hidden(self, x: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        if self.kernels and kernels_supported(x):
            from lit_gpt.kernels import linear_cross_entropy

            return linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten(), ignore_index)
        logits = self.lm_head(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore_index)

    # ---- KV cache -------------------------------------------------------------------------------
    def set_kv_cache(self, batch_size: int, max_seq_length: Optional[int] = None,
                     device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        max_seq_length = max_seq_length or self.config.block_size
        p = self.lm_head.weight
        for block in self.blocks:
            block.attn.kv_cache = KVCache(batch_size, max_seq_length, self.config.n_query_groups,
                                          self.config.head_size, device or p.device, dtype or p.dtype)

    def clear_kv_cache(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None


class Block(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = SwiGLU(config)

    def set_kernels(self, enabled: bool) -> None:
        for m in (self.attn_norm, self.attn, self.mlp_norm, self.mlp):
            m.kernels = enabled

    def forward(self, x: torch.Tensor, delta: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                input_pos: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the residual stream before the previous Block's MLP output `delta` is added. Returns the stream after
        this Block's attention and this Block's MLP output, again unadded. Sums in the same order as
        `x = x + attn(norm(x)); x = x + mlp(norm(x))`, so the result is identical; only the passes are fused."""
        h, x = self.attn_norm.add_and_norm(delta, x)
        h, x = self.mlp_norm.add_and_norm(self.attn(h, cos, sin, input_pos), x)
        return x, self.mlp(h)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.hs = config.n_head, config.n_query_groups, config.head_size
        self.qkv = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv) * self.hs, bias=False)
        self.proj = nn.Linear(self.n_head * self.hs, config.n_embd, bias=False)
        self.kv_cache: Optional[KVCache] = None
        self.kernels = False

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                input_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.n_head + 2 * self.n_kv, self.hs)
        q, k, v = qkv.split([self.n_head, self.n_kv, self.n_kv], dim=2)  # (B, T, heads, hs)
        if self.kernels and kernels_supported(x):
            from lit_gpt.kernels import apply_rope as rope_kernel

            q, k = rope_kernel(q, k, cos, sin, inplace=not torch.is_grad_enabled())
        else:
            q, k = apply_rope_reference(q, k, cos, sin)

        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("input_pos given but no KV cache: call model.set_kv_cache() first")
            k, v, mask = self.kv_cache.update(input_pos, k, v)
            y = sdpa(q, k, v, mask=mask)
        elif x.is_cuda:  # cuDNN on Hopper, flash-attn 2 when it works, else SDPA (or LIT_GPT_ATTENTION's choice)
            from lit_gpt.kernels.attention import causal_attention

            y = causal_attention(q, k, v)
        else:
            y = sdpa(q, k, v)
        return self.proj(y.reshape(B, T, self.n_head * self.hs))


class KVCache(nn.Module):
    """Keys and values for positions already seen, laid out (B, T_max, kv_heads, hs)."""

    def __init__(self, batch_size: int, max_seq_length: int, n_kv: int, hs: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        shape = (batch_size, max_seq_length, n_kv, hs)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Writes k, v at `input_pos` and returns the keys/values up to the last position plus the boolean mask
        (T_q, T_k) letting each query see the cached positions at or before its own."""
        B = k.shape[0]
        if int(input_pos.max()) >= self.k.shape[1]:
            raise ValueError(f"position {int(input_pos.max())} is beyond the KV cache length {self.k.shape[1]}")
        self.k[:B, input_pos] = k.to(self.k.dtype)
        self.v[:B, input_pos] = v.to(self.v.dtype)
        n = int(input_pos.max()) + 1
        mask = input_pos[:, None] >= torch.arange(n, device=input_pos.device)[None, :]
        return self.k[:B, :n], self.v[:B, :n], mask


class SwiGLU(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.n_embd, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.n_embd, bias=False)
        self.kernels = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels and kernels_supported(x):  # one gradient tensor for [gate | up], no concatenation in backward
            from lit_gpt.kernels import swiglu_backend, swiglu_packed, xformers_mlp

            if swiglu_backend() == "xformers":  # LIT_GPT_SWIGLU=xformers: the whole MLP in xformers' op
                return xformers_mlp(x, self.gate_up.weight, self.down.weight)
            return self.down(swiglu_packed(self.gate_up(x)))
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.kernels = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_reference(x, self.weight, self.eps)  # the kernel path fuses the add: see add_and_norm

    def add_and_norm(self, delta: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + delta), residual + delta): one fused pass with kernels on."""
        if self.kernels and kernels_supported(residual):
            from lit_gpt.kernels import add_rms_norm
            return add_rms_norm(delta, residual, self.weight, self.eps)
        residual = residual + delta
        return self(residual), residual
