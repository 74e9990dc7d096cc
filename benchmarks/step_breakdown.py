"""The training step of lit_gpt (kernels on) split into parts, each timed alone at the step's shapes, against
its floor: GEMMs, lm_head + loss and attention at the measured matmul rate (FLOPs / measured 8192^3 GEMM
TFLOP/s), elementwise kernels and the optimizer at the measured copy bandwidth (bytes that must move / GB/s).
Used by train_throughput.py; the gap between a part and its floor is what is left to win there.
"""

from __future__ import annotations

import torch

from benchmarks.timing import copy_gbps, matmul_tflops, time_ms


def _fwd_bwd(fn, inputs):
    """A callable running fn(*inputs) forward and backward with a fixed random output gradient."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    grads = [torch.randn_like(o) for o in outs]

    def run():
        for t in inputs:
            t.grad = None
        o = fn(*inputs)
        torch.autograd.backward(o if isinstance(o, tuple) else (o,), grads)
    return run


def _bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def breakdown(config, T: int, B: int, tiny: bool = False) -> list[dict]:
    from lit_gpt.kernels import add_rms_norm, apply_rope, linear_cross_entropy, swiglu_packed
    from lit_gpt.kernels.attention import causal_attention, resolve_backend
    from lit_gpt.ops import build_rope_cache

    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tflops, gbps = matmul_tflops(device, dtype), copy_gbps(device)
    iters = 10 if device.type == "cuda" else 1  # on the CPU the kernels are interpreted: slow

    def timed(fn) -> float:
        return time_ms(fn, device, iters, warmup=min(2, iters))
    L, C, H, K, hs, I, V = (config.n_layer, config.n_embd, config.n_head, config.n_query_groups, config.head_size,
                            config.intermediate_size, config.vocab_size)
    N = B * T
    rows = []

    def add(part, ms, flops=None, nbytes=None):
        floor = flops / (tflops * 1e12) * 1e3 if flops else nbytes / (gbps * 1e9) * 1e3
        rows.append({"part": part, "ms": ms, "floor_ms": floor,
                     "floor_basis": f"{tflops:.3g} TFLOP/s GEMM" if flops else f"{gbps:.3g} GB/s copy"})

    def rand(*shape, dt=dtype, grad=True):
        return torch.randn(*shape, device=device, dtype=dt).requires_grad_(grad)

    # GEMMs of one block (x @ W^T, dy @ W, dy^T @ x for qkv, proj, gate_up, down), times the layers
    shapes = [(C, (H + 2 * K) * hs), (H * hs, C), (C, 2 * I), (I, C)]
    mats = [(rand(N, i, grad=False), rand(o, i, grad=False), rand(N, o, grad=False)) for i, o in shapes]

    def block_gemms():
        for x, w, dy in mats:
            x @ w.t(), dy @ w, dy.t() @ x
    add(f"GEMMs, {L} blocks (fwd + 2 bwd)", timed(block_gemms) * L,
        flops=L * sum(6 * N * i * o for i, o in shapes))
    del mats

    q, k, v = rand(B, T, H, hs), rand(B, T, K, hs), rand(B, T, K, hs)
    attn_ms = timed(_fwd_bwd(causal_attention, (q, k, v))) * L
    add(f"attention fwd+bwd, {L} layers ({resolve_backend(device, dtype)})", attn_ms,
        flops=L * 3.5 * 2 * B * H * T * T * hs)  # causal: half of 4*B*H*T^2*hs fwd, bwd 2.5x fwd
    del q, k, v

    x32, res = rand(B, T, C, dt=torch.float32), rand(B, T, C)  # fp32 residual stream, attention output in dtype
    w = rand(C, dt=torch.float32)
    qkv = rand(B, T, H + 2 * K, hs)
    cos, sin = build_rope_cache(T, hs, config.rope_base, device)
    h = rand(B, T, 2 * I)
    elementwise = [  # (kernel, calls per Block, fwd+bwd, bytes): every residual add is fused into the next norm
        ("add_rms_norm", 2, _fwd_bwd(lambda a, r, b: add_rms_norm(a, r, b, 1e-5), (res, x32, w)),
         4 * _bytes(x32) + 4 * _bytes(res)),
        ("rope", 1, _fwd_bwd(lambda t: apply_rope(*t.split([H, K, K], dim=2)[:2], cos, sin), (qkv,)),
         4 * _bytes(qkv) * (H + K) // (H + 2 * K)),
        ("swiglu", 1, _fwd_bwd(swiglu_packed, (h,)), _bytes(h) * 3 + _bytes(h) // 2 * 2),
    ]
    ms = sum(n * timed(fn) for _, n, fn, _ in elementwise) * L
    add(f"norms + RoPE + SwiGLU kernels fwd+bwd, {L} blocks", ms,
        nbytes=L * sum(n * b for _, n, _, b in elementwise))
    del x32, res, qkv, h, elementwise

    xh, wh = rand(N, C), rand(V, C, dt=torch.float32)
    targets = torch.randint(0, V, (N,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def loss_step():
        xh.grad = wh.grad = None
        with autocast:
            loss = linear_cross_entropy(xh, wh, targets)
        loss.backward()
    add("lm_head + cross-entropy fwd+bwd (fused, chunked)", timed(loss_step),
        flops=6 * N * C * V)
    del xh, wh

    n_params = config.num_params()
    params = [torch.nn.Parameter(torch.randn(n_params, device=device) * 0.02)]
    params[0].grad = torch.randn_like(params[0]) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    opt.step()  # allocate the state

    def opt_step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    # AdamW reads p, g, m, v and writes p, m, v; clipping reads g, then scales it (read + write)
    add("clip_grad_norm_ + AdamW (fused)", timed(opt_step), nbytes=n_params * 4 * 10)
    return rows


def breakdown_table(rows: list[dict], step_ms: float | None = None) -> str:
    lines = ["| part | ms | floor ms | floor basis | part / floor |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = r["ms"] / r["floor_ms"] if r["floor_ms"] else float("nan")
        lines.append(f"| {r['part']} | {r['ms']:.2f} | {r['floor_ms']:.2f} | {r['floor_basis']} | {ratio:.2f}x |")
    total = sum(r["ms"] for r in rows)
    floor = sum(r["floor_ms"] for r in rows)
    lines.append(f"| sum of parts | {total:.2f} | {floor:.2f} | | {total / floor:.2f}x |")
    if step_ms is not None:
        lines.append(f"| measured step (best lit_gpt kernels row); rest = embedding, residual adds, launches | {step_ms:.2f} "
                     f"| | | rest {step_ms - total:.2f} ms |")
    return "\n".join(lines)
