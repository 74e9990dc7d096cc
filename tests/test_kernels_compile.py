"""Ahead-of-time compilation of every Triton kernel in lit_gpt.kernels for real GPUs, without a GPU.

The interpreter (TRITON_INTERPRET=1, what tests/test_kernels.py uses on CPU) accepts code the real compiler
rejects, so here each kernel goes through Triton's whole CUDA pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas
cubin) for sm_80 (A100), sm_89 (RTX 4090) and sm_90 (H100).

The launches are the real ones: each launcher in lit_gpt.kernels runs on CPU tensors of the MicroLlama-300M and
TinyLlama-1.1B shapes (T=2048) with its kernel swapped for a recorder, so the block sizes, num_warps, dtypes and
integer arguments are exactly what the launcher passes. Triton's own JIT binder then turns those arguments into
the signature, constexprs and alignment attributes a CUDA launch would compile with. Registers, stack frame and
spill bytes per thread come from ptxas' own `-v` report, shared memory from the compiled kernel's metadata.
Asserted: PTX for the target and a cubin, shared memory within the GPU's limit, no register spills (beyond a
couple of registers ptxas may trade for occupancy). Run with `-s` to see the table.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from lit_gpt import Config  # noqa: E402
from lit_gpt.ops import build_rope_cache  # noqa: E402

# by module path: the package exports functions of the same names (lit_gpt.kernels.swiglu is the function)
rmsnorm, rope, swiglu, cross_entropy = (importlib.import_module(f"lit_gpt.kernels.{m}")
                                        for m in ("rmsnorm", "rope", "swiglu", "cross_entropy"))

TARGETS = {"sm80 (A100)": 80, "sm89 (RTX 4090)": 89, "sm90 (H100)": 90}
MAX_SHARED = {80: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}  # opt-in shared memory per block
# ptxas may trade a register or two for occupancy (seen: 8 B at rms_norm MAX_COLS fp32 on sm_80, a store and a
# load that stay in L1); more than this is a kernel that does not fit its block size / num_warps
SPILL_BUDGET = 16  # bytes of spill stores per thread
MODELS = ("MicroLlama-300M", "TinyLlama-1.1B")
T = 2048
KERNELS = {  # test id -> (module, kernel attribute)
    "rms_norm_fwd": (rmsnorm, "_rms_norm_fwd_kernel"),
    "rms_norm_bwd": (rmsnorm, "_rms_norm_bwd_kernel"),
    "rope": (rope, "_rope_kernel"),
    "swiglu_fwd": (swiglu, "_swiglu_fwd_kernel"),
    "swiglu_bwd": (swiglu, "_swiglu_bwd_kernel"),
    "cross_entropy": (cross_entropy, "_cross_entropy_kernel"),
}


@dataclass
class Launch:
    label: str  # which model / dtypes the launch came from
    args: tuple
    kwargs: dict


class Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records the call, runs nothing."""

    def __init__(self, label: list[str]):
        self.label = label
        self.launches: list[Launch] = []

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.launches.append(Launch(self.label[0], args, kwargs))
        return record


def _run_launchers(label: list[str]) -> None:
    """Every launcher in lit_gpt.kernels, the way training calls them, at both model shapes and fp32 / bf16."""
    for name in MODELS:
        c = Config.from_name(name)
        hs = c.head_size
        for dtype in (torch.float32, torch.bfloat16):
            label[0] = f"{name} {str(dtype)[6:]}"
            x = torch.empty(1, T, c.n_embd, dtype=dtype)
            w = torch.empty(c.n_embd)
            # RMSNorm: plain (first norm of a block, input may be the fp32 residual stream) and with the residual
            # add (attention output in the compute dtype + the fp32 residual stream), output in bf16 (autocast).
            y, _, rstd = rmsnorm._rms_norm_fwd(x, None, w, 1e-5, torch.bfloat16, dtype)
            rmsnorm._rms_norm_bwd(y, x, w, rstd, None)
            residual = torch.empty(1, T, c.n_embd)
            _, s, rstd = rmsnorm._rms_norm_fwd(x, residual, w, 1e-5, torch.bfloat16, torch.float32)
            rmsnorm._rms_norm_bwd(y, s, w, rstd, s)
            # RoPE on q and k split off the fused qkv output (strided views), forward and backward
            qkv = torch.empty(1, T, c.n_head + 2 * c.n_query_groups, hs, dtype=dtype)
            q, k = qkv[:, :, :c.n_head], qkv[:, :, c.n_head:c.n_head + c.n_query_groups]
            cos, sin = build_rope_cache(T, hs, c.rope_base)
            rope._rope(q, k, cos, sin, False)
            rope._rope(q, k, cos, sin, True)
            # SwiGLU on the packed gate_up output
            h = torch.empty(1, T, 2 * c.intermediate_size, dtype=dtype)
            dy = swiglu._swiglu_packed(h)
            swiglu._swiglu_packed_bwd(dy, h)
            # lm_head + cross-entropy: only the vocab decides the kernel config, so a few rows suffice
            rows = 16
            xs, head = torch.zeros(rows, c.n_embd, dtype=dtype), torch.zeros(c.vocab_size, c.n_embd)
            targets = torch.zeros(rows, dtype=torch.long)
            cross_entropy._linear_cross_entropy(xs, head, targets, -100, 0.0, 0, dtype, True, True)
            cross_entropy._linear_cross_entropy(xs, head, targets, -100, 1e-4, 0, dtype, False, False)
    # the widest row rms_norm accepts: it holds the row in registers, so this is where spills would start
    for dtype in (torch.float32, torch.bfloat16):
        label[0] = f"rms_norm at MAX_COLS={rmsnorm.MAX_COLS} {str(dtype)[6:]}"
        x, w = torch.empty(4, rmsnorm.MAX_COLS, dtype=dtype), torch.empty(rmsnorm.MAX_COLS)
        y, s, rstd = rmsnorm._rms_norm_fwd(x, torch.empty_like(x), w, 1e-5, torch.bfloat16, torch.float32)
        rmsnorm._rms_norm_bwd(y, s, w, rstd, s)
        y, _, rstd = rmsnorm._rms_norm_fwd(x, None, w, 1e-5, torch.bfloat16, dtype)
        rmsnorm._rms_norm_bwd(y, x, w, rstd, None)


def _record_launches() -> dict[str, list[Launch]]:
    """Kernel id -> the launches its launchers made (with repeats: each specialization is compiled once)."""
    label = [""]
    recorders = {kid: Recorder(label) for kid in KERNELS}
    kernels = {kid: getattr(module, attr) for kid, (module, attr) in KERNELS.items()}
    try:
        for kid, (module, attr) in KERNELS.items():
            setattr(module, attr, recorders[kid])
        with torch.no_grad():
            _run_launchers(label)
    finally:
        for kid, (module, attr) in KERNELS.items():
            setattr(module, attr, kernels[kid])
    return {kid: rec.launches for kid, rec in recorders.items()}


def _specialize(kernel, target: GPUTarget, launch: Launch):
    """(ASTSource, options) exactly as `kernel[grid](*args, **kwargs)` would build them on a CUDA device."""
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.kwargs)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options


def _ptxas_usage(log: str) -> dict[str, int]:
    """Registers, stack frame and spill bytes per thread from ptxas' own `-v` report (one kernel per log)."""
    regs = re.search(r"Used (\d+) registers", log)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not (regs and frame):
        raise RuntimeError(f"unexpected ptxas report:\n{log}")
    return {"regs": int(regs[1]), "stack": int(frame[1]), "spill_stores": int(frame[2]), "spill_loads": int(frame[3])}


def _compile(src, target: GPUTarget, options) -> dict:
    """triton.compile; the kernel's shared memory, ptxas' resource report and whether PTX and a cubin came out."""
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # Triton prints ptxas' report under TRITON_DUMP_PTXAS_LOG=1
        compiled = triton.compile(src, target=target, options=options.__dict__)
    ptx_ok = f".target sm_{target.arch}" in compiled.asm["ptx"]
    return {"shared": compiled.metadata.shared, "warps": compiled.metadata.num_warps, "ptx_ok": ptx_ok,
            "cubin_ok": compiled.kernel[:4] == b"\x7fELF", **_ptxas_usage(log.getvalue())}


@triton.jit
def _probe(X):
    tl.store(X, 1.0)


def _describe(kernel, launch: Launch, src) -> str:
    pointers = " ".join(f"{k}={v}" for k, v in src.signature.items() if v.startswith("*"))
    consts = {kernel.arg_names[i[0]]: v for i, v in src.constants.items() if kernel.arg_names[i[0]] in launch.kwargs}
    return f"{launch.label}: {pointers} {consts}"


def compile_all() -> dict:
    """Every distinct launch of every kernel compiled for every target: {"rows": [...]} or {"skip": reason}."""
    from triton.runtime.jit import JITFunction
    if not hasattr(JITFunction, "_pack_args"):  # the JIT internals replayed here are Triton 3.9's
        return {"skip": f"Triton {triton.__version__} has no JITFunction._pack_args to replay launches with"}
    try:
        triton.compile(triton.compiler.ASTSource(_probe, {"X": "*fp32"}), target=GPUTarget("cuda", 80, 32))
    except Exception as e:  # noqa: BLE001 - failing on a one-line kernel means the toolchain, not our kernels
        return {"skip": f"Triton's CUDA backend / ptxas cannot run here: {type(e).__name__}: {str(e)[:300]}"}
    launches, rows = _record_launches(), []
    for kid, (module, attr) in KERNELS.items():
        kernel = getattr(module, attr)
        for arch in TARGETS.values():
            target, seen = GPUTarget("cuda", arch, 32), set()
            for launch in launches[kid]:
                src, options = _specialize(kernel, target, launch)
                key = (str(src.signature), str(src.constants), str(src.attrs), options.num_warps)
                if key in seen:
                    continue
                seen.add(key)
                row = {"kid": kid, "arch": arch, "kernel": attr, "what": _describe(kernel, launch, src)}
                try:
                    row.update(_compile(src, target, options))
                except Exception as e:  # noqa: BLE001 - reported by the test of this kernel and target
                    row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
    return {"rows": rows}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """compile_all() in a fresh process: TRITON_INTERPRET off, an empty Triton cache (every kernel really compiles).

    A process of its own because the interpreter leaves triton.language patched once it has run a nested
    @triton.jit helper (rope's `_rotate_heads`), which breaks compilation in the process of tests/test_kernels.py."""
    tmp = tmp_path_factory.mktemp("kernels_compile")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp / "cache"), TRITON_ALWAYS_COMPILE="1", TRITON_DUMP_PTXAS_LOG="1",
               TRITON_DEFAULT_FP_FUSION="1", CUDA_VISIBLE_DEVICES="")  # 1: Triton 3.9's default, without a warning
    out = tmp / "results.json"
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, f"compiling the kernels crashed:\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    if "skip" in data:
        pytest.skip(data["skip"])
    return data


@pytest.mark.parametrize("arch", TARGETS.values(), ids=TARGETS.keys())
@pytest.mark.parametrize("kid", KERNELS)
def test_kernel_compiles(kid, arch, results):
    rows = [r for r in results["rows"] if r["kid"] == kid and r["arch"] == arch]
    assert rows, f"no launcher in lit_gpt.kernels launched {KERNELS[kid][1]}"
    for r in rows:
        assert "error" not in r, f"{r['kernel']} does not compile for sm_{arch} at {r['what']}:\n{r.get('error')}"
        print(f"sm_{arch} {r['kernel']} warps={r['warps']} regs={r['regs']} spill_stores={r['spill_stores']}B "
              f"stack={r['stack']}B shared={r['shared']}B | {r['what']}")
        assert r["ptx_ok"] and r["cubin_ok"], f"{r['kernel']}: no PTX for sm_{arch} or no cubin at {r['what']}"
        assert r["shared"] <= MAX_SHARED[arch], f"{r['kernel']} needs {r['shared']} B of shared memory at {r['what']}"
        assert r["spill_stores"] <= SPILL_BUDGET, f"{r['kernel']} spills registers at {r['what']}: {r}"


if __name__ == "__main__":  # the child process of `results`
    result = compile_all()
    Path(sys.argv[1]).write_text(json.dumps(result))
