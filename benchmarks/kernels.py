"""Per-kernel time and peak memory (forward + backward) of lit_gpt's Triton kernels against the PyTorch eager
reference, the torch.compile'd reference, and Liger's kernels when liger_kernel imports; attention per backend
(cuDNN, SDPA, flash-attn 2 and 3, xformers; eager = SDPA's math kernel) and the whole SwiGLU MLP with our Triton
SwiGLU against xformers.ops.swiglu. A backend that is not installed or does not work here is a row saying why.

  python benchmarks/kernels.py                 # MicroLlama-300M shapes, micro batch 16, T=2048, bf16
  python benchmarks/kernels.py --tiny          # tiny shapes on the CPU (kernels interpreted), a smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="MicroLlama-300M", help="lit_gpt config name for the shapes")
    p.add_argument("--micro-batch", type=int, default=16, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence")
    p.add_argument("--iters", type=int, default=20, help="timed runs per measurement (median reported)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd references")
    p.add_argument("--tiny", action="store_true", help="'tiny' config, T=16, micro batch 1, CPU, interpreted kernels")
    args = p.parse_args(argv)
    if args.tiny:
        args.model, args.micro_batch, args.seq_len, args.iters = "tiny", 1, 16, 1
    return args


def cases(config, B, T, device, dtype):
    """(name, {implementation: callable(*inputs)}, make_inputs) per kernel; each callable returns the outputs."""
    import torch

    from lit_gpt.kernels import (
        add_rms_norm, add_rms_norm_reference, apply_rope, apply_rope_reference, linear_cross_entropy,
        linear_cross_entropy_reference, rms_norm, rms_norm_reference, swiglu_packed, swiglu_reference,
    )
    from lit_gpt.ops import build_rope_cache

    C, H, K, hs, I, V = (config.n_embd, config.n_head, config.n_query_groups, config.head_size,
                         config.intermediate_size, config.vocab_size)
    cos, sin = build_rope_cache(T, hs, config.rope_base, device)

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, device=device, dtype=dt).requires_grad_()

    liger = {}
    try:  # optional peer
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy, liger_rms_norm
        from liger_kernel.transformers.functional import liger_swiglu, liger_rope
        liger = {
            "rms_norm": lambda x, w: liger_rms_norm(x, w, 1e-5),
            "swiglu": lambda h: liger_swiglu(*h.chunk(2, dim=-1)),
            "rope": lambda qkv: liger_rope(*(t.transpose(1, 2) for t in qkv.split([H, K, K], dim=2)[:2]),
                                           cos[None], sin[None]),
            "linear_cross_entropy": lambda x, w, t: liger_fused_linear_cross_entropy(x, w, t),
        }
    except Exception:  # not installed, or an API that moved: the column stays empty
        pass
    N = B * T
    targets = torch.randint(0, V, (N,), device=device)
    out = [
        ("rms_norm", {"triton": lambda x, w: rms_norm(x, w, 1e-5),
                      "eager": lambda x, w: rms_norm_reference(x, w, 1e-5)},
         lambda: (rand(B, T, C, dt=torch.float32), rand(C, dt=torch.float32))),
        ("add_rms_norm", {"triton": lambda a, r, w: add_rms_norm(a, r, w, 1e-5),
                          "eager": lambda a, r, w: add_rms_norm_reference(a, r, w, 1e-5)},
         lambda: (rand(B, T, C), rand(B, T, C, dt=torch.float32), rand(C, dt=torch.float32))),
        ("rope", {"triton": lambda qkv: apply_rope(*qkv.split([H, K, K], dim=2)[:2], cos, sin),
                  "eager": lambda qkv: apply_rope_reference(*qkv.split([H, K, K], dim=2)[:2], cos, sin)},
         lambda: (rand(B, T, H + 2 * K, hs),)),
        ("swiglu", {"triton": swiglu_packed, "eager": lambda h: swiglu_reference(*h.chunk(2, dim=-1))},
         lambda: (rand(B, T, 2 * I),)),
        ("linear_cross_entropy", {"triton": lambda x, w, t: linear_cross_entropy(x, w, t),
                                  "eager": lambda x, w, t: linear_cross_entropy_reference(x, w, t)},
         lambda: (rand(N, C), rand(V, C), targets)),
    ]
    for name, impls, _ in out:
        if name in liger:
            impls["liger"] = liger[name]
    return out


def backend_cases(config, B, T, device, dtype):
    """Like `cases`, for the choices between backends: causal GQA attention per backend (eager: SDPA's math
    kernel) and the whole SwiGLU MLP (two GEMMs around our Triton SwiGLU, or xformers.ops.swiglu). An
    implementation that cannot run here is the string "not run: why"."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lit_gpt.kernels import swiglu_packed, swiglu_reference, xformers_mlp
    from lit_gpt.kernels.attention import BACKENDS, backend_function, why_unusable
    from lit_gpt.kernels.optional import installed
    from lit_gpt.ops import sdpa

    C, H, K, hs, I = config.n_embd, config.n_head, config.n_query_groups, config.head_size, config.intermediate_size

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_()

    def math_sdpa(q, k, v):
        with sdpa_kernel([SDPBackend.MATH]):
            return sdpa(q, k, v)

    attention = {"eager": math_sdpa}
    for backend in BACKENDS[1:]:
        why = why_unusable(backend, device, dtype)
        attention[backend] = backend_function(backend) if why is None else f"not run: {why}"
    mlp = {"triton": lambda x, w12, w3: F.linear(swiglu_packed(F.linear(x, w12)), w3),
           "eager": lambda x, w12, w3: F.linear(swiglu_reference(*F.linear(x, w12).chunk(2, -1)), w3),
           "xformers": xformers_mlp if installed("xformers") else "not run: xformers is not installed"}
    return [("attention", attention, lambda: (rand(B, T, H, hs), rand(B, T, K, hs), rand(B, T, K, hs))),
            ("swiglu mlp", mlp, lambda: (rand(B, T, C), rand(2 * I, C), rand(C, I)))]


def measure(fn, make_inputs, device, iters):
    """(median ms, peak GiB) of fn forward + backward on fresh inputs."""
    import torch

    from benchmarks.timing import peak_memory_gib, time_ms

    inputs = make_inputs()
    tensors = [t for t in inputs if t.is_floating_point()]

    def run():
        for t in tensors:
            t.grad = None
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward([o for o in outs if o.requires_grad], [torch.ones_like(o) for o in outs
                                                                        if o.requires_grad])
    ms = time_ms(run, device, iters, warmup=min(3, iters))
    return ms, peak_memory_gib(device, run)


def main(argv=None):
    args = parse_args(argv)
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import torch

    from lit_gpt import Config

    try:
        config = Config.from_name(args.model)
    except ValueError as e:
        sys.exit(f"error: {e}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"## kernels, {config.name} shapes, micro batch {args.micro_batch}, T={args.seq_len}, {dtype}, "
          f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}\n")
    print("| kernel | implementation | fwd+bwd ms | peak GiB | vs eager |")
    print("|---|---|---|---|---|")
    failed = []
    shapes = (config, args.micro_batch, args.seq_len, device, dtype)
    for name, impls, make_inputs in cases(*shapes) + backend_cases(*shapes):
        if not args.no_compile:
            impls["compiled eager"] = torch.compile(impls["eager"])
        eager_ms = None
        for impl, fn in sorted(impls.items(), key=lambda kv: kv[0] != "eager"):
            if isinstance(fn, str):  # an optional backend that cannot run here, and why
                print(f"| {name} | {impl} | {fn} | | |", flush=True)
                continue
            print(f"measuring {name} / {impl} ...", file=sys.stderr, flush=True)
            try:
                ms, gib = measure(fn, make_inputs, device, args.iters)
            except torch.OutOfMemoryError:
                print(f"| {name} | {impl} | OOM | | |")
                continue
            except Exception as e:  # a row, not a crash of the table; ours failing still fails the run (below)
                print(f"| {name} | {impl} | error: {type(e).__name__}: {str(e)[:120]} | | |", flush=True)
                if impl in ("triton", "eager"):
                    failed.append(f"{name} / {impl}")
                continue
            eager_ms = ms if impl == "eager" else eager_ms
            speedup = f"{eager_ms / ms:.2f}x" if eager_ms else ""
            mem = "n/a" if gib != gib else f"{gib:.2f}"
            print(f"| {name} | {impl} | {ms:.3f} | {mem} | {speedup} |", flush=True)
    if failed:
        sys.exit(f"error: lit_gpt's own implementation failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
