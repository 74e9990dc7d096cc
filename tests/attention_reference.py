"""The float64 reference every attention backend is checked against (tests/test_kernels.py on CUDA,
tests/test_attention_backends.py on the CPU)."""

import torch


def attention_float64(q, k, v):
    """Causal attention in float64 with k/v repeated to full heads, on (B, T, heads, hs) tensors."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hs)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
    return y.transpose(1, 2)


def relative_error(actual, expected):
    assert not torch.isnan(actual).any(), "NaN in attention output or gradient"
    return float((actual.detach().double() - expected.detach()).norm() / expected.detach().norm())
