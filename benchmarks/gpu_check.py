"""The first minute on a GPU: what it is, and whether the kernels and the trainer compute the right numbers there.
benchmarks/quick.py runs each part in its own process; each prints one `RESULT {json}` line per row (a readable
line goes to stderr).

  python benchmarks/gpu_check.py env        # GPU, driver, torch, CUDA, cuDNN, Triton versions
  python benchmarks/gpu_check.py kernels    # every Triton kernel (and attention) fwd+bwd vs float64, MicroLlama, bf16
  python benchmarks/gpu_check.py trainer    # 10 steps of the debug model under the trainer: kernels+compile vs eager
  python benchmarks/gpu_check.py --tiny kernels   # the 'tiny' config on the CPU (kernels interpreted), in seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULT_TAG = "RESULT "


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("part", choices=["env", "kernels", "trainer"])
    p.add_argument("--tiny", action="store_true", help="the 'tiny' config on the CPU in float32 (a rehearsal)")
    p.add_argument("--steps", type=int, default=10, help="trainer: optimizer steps per run")
    p.add_argument("--compile-backend", default="inductor",
                   help="trainer: torch.compile backend of the compiled run (aot_eager: dynamo without codegen)")
    return p.parse_args(argv)


def emit(row: dict) -> None:
    print(RESULT_TAG + json.dumps(row), flush=True)
    detail = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                       if k not in ("check", "status", "losses"))
    print(f"  {row['check']}: {row['status']} ({detail})", file=sys.stderr, flush=True)


# ---- env ------------------------------------------------------------------------------------------------------
def environment(tiny: bool) -> dict:
    import torch
    import triton

    row = {"check": "environment", "status": "ok", "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if tiny or not torch.cuda.is_available():
        return {**row, "device": "cpu", "driver": None, "results_dir": results_dir("cpu")}
    props = torch.cuda.get_device_properties(0)
    row.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
               multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
               results_dir=results_dir(props.name))
    fields = ["driver_version", "clocks.max.sm", "power.limit"]
    smi = shutil.which("nvidia-smi")
    out = subprocess.run([smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True).stdout.strip() if smi else ""
    values = [v.strip() for v in out.split(",")] if out else [None] * 3
    return {**row, **dict(zip(["driver", "max_sm_clock_mhz", "power_limit_w"], values))}


def results_dir(device: str) -> str:
    """benchmarks/results/<YYYY-MM-DD>-<device>/, where a run's files are committed (e.g. ...-h100-sxm)."""
    from lit_gpt.training.speed_monitor import device_key

    slug = (device_key(device) or device.replace("NVIDIA", "").split()[0]).lower().replace(" ", "-")
    return f"benchmarks/results/{time.strftime('%Y-%m-%d', time.gmtime())}-{slug}/"


# ---- kernels --------------------------------------------------------------------------------------------------
def relative_error(actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64 (NaN stays NaN, so it fails every tolerance)."""
    expected = expected.detach().double()
    return float((actual.detach().double() - expected).norm() / expected.norm().clamp_min(1e-30))


def fwd_bwd_errors(fn, ref_fn, inputs) -> tuple[float, float]:
    """Largest relative error of fn's outputs and input gradients against ref_fn on float64 copies of the inputs,
    under the same random output gradients."""
    import torch

    refs = [t.detach().double().requires_grad_() if t.is_floating_point() else t for t in inputs]
    outs, ref_outs = fn(*inputs), ref_fn(*refs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    ref_outs = ref_outs if isinstance(ref_outs, tuple) else (ref_outs,)
    g = torch.Generator(device=outs[0].device).manual_seed(0)
    grads = [torch.randn(o.shape, generator=g, device=o.device, dtype=torch.float64) for o in ref_outs]
    torch.autograd.backward(outs, [d.to(o.dtype) for d, o in zip(grads, outs)])
    torch.autograd.backward(ref_outs, grads)
    fwd = max(relative_error(o, r) for o, r in zip(outs, ref_outs))
    bwd = max(relative_error(t.grad, r.grad) for t, r in zip(inputs, refs) if t.is_floating_point())
    return fwd, bwd


def check_kernels(tiny: bool) -> None:
    """Each of benchmarks/kernels.py's cases (lit_gpt's Triton kernel against its eager reference, at the model's
    shapes) plus causal attention (cuDNN on Hopper) against SDPA's math in float64."""
    import torch

    from benchmarks.kernels import cases
    from lit_gpt import Config
    from lit_gpt.kernels.attention import causal_attention

    config = Config.from_name("tiny" if tiny else "MicroLlama-300M")
    B, T = (1, 16) if tiny else (2, 2048)  # the model's per-token shapes at T=2048; B kept small for float64
    device = torch.device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    tol = 1e-4 if tiny else 2e-2  # bf16 rounds to ~4e-3; a wrong index or a missed row is O(1)

    def attention_reference(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (q, k, v)), is_causal=True, enable_gqa=True).transpose(1, 2)

    H, K, hs = config.n_head, config.n_query_groups, config.head_size
    checks = [(name, impls["triton"], impls["eager"], make_inputs)
              for name, impls, make_inputs in cases(config, B, T, device, dtype)]
    checks.append(("attention", causal_attention, attention_reference, lambda: tuple(
        torch.randn(B, T, n, hs, device=device, dtype=dtype).requires_grad_() for n in (H, K, K))))
    for name, fn, ref_fn, make_inputs in checks:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        try:
            fwd, bwd = fwd_bwd_errors(fn, ref_fn, make_inputs())
            status = "ok" if fwd <= tol and bwd <= tol else f"FAIL: error above {tol:g}"
            row = {"check": f"kernel {name}", "status": status, "fwd_err": fwd, "bwd_err": bwd, "tol": tol}
        except Exception as e:  # one kernel's failure is a row: the others still run
            row = {"check": f"kernel {name}", "status": f"FAIL: {type(e).__name__}: {str(e)[:160]}"}
        emit({**row, "seconds": round(time.perf_counter() - t0, 2)})


# ---- trainer --------------------------------------------------------------------------------------------------
def check_trainer(tiny: bool, steps: int, compile_backend: str) -> None:
    """The same steps twice under the trainer (same seed, same data): eager, then kernels + per-Block compile.
    Every loss must be finite and the two runs' losses equal within the precision's tolerance."""
    import numpy as np

    from lit_gpt.data.packed import PackedDatasetWriter
    from lit_gpt.training import TrainArgs, cli, loop
    from lit_gpt.training.metrics import read_metrics

    if compile_backend != "inductor":  # the trainer always compiles with inductor; a rehearsal may skip codegen
        from functools import partial

        loop.wrap_blocks = partial(loop.wrap_blocks, backend=compile_backend)
    model, block, batch = ("tiny", 16, 2) if tiny else ("debug", 256, 8)
    tol = 1e-3 if tiny else 2e-2
    with tempfile.TemporaryDirectory() as tmp:
        vocab = 512 if tiny else 4096
        tokens = np.random.default_rng(0).integers(0, vocab, 2 * steps * batch * (block + 1))
        with PackedDatasetWriter(Path(tmp) / "data", "train", 4096, vocab) as writer:
            writer.add_array(tokens)
        common = ["--model_name", model, "--block_size", str(block), "--train_data_dir", f"{tmp}/data",
                  "--train_prefixes", "[train]", "--global_batch_size", str(batch), "--micro_batch_size",
                  str(batch), "--max_steps", str(steps), "--warmup_steps", "2", "--learning_rate", "3e-3",
                  "--log_interval", "1", "--save_interval", str(steps), "--loggers", "[]", "--accelerator",
                  "cpu" if tiny else "cuda", "--devices", "1"]
        losses = {}
        for name, extra in (("eager", []), ("kernels+compile", ["--kernels", "true", "--compile", "true"])):
            t0 = time.perf_counter()
            try:
                cli(TrainArgs(), common + ["--out_dir", f"{tmp}/{name}", *extra])
                losses[name] = [r["loss"] for r in read_metrics(Path(tmp) / name / "metrics.csv")
                                if r["loss"] is not None]
                row = {"check": f"trainer {name}", "status": "ok", "losses": losses[name]}
                if len(losses[name]) != steps or not all(map(math.isfinite, losses[name])):
                    row["status"] = f"FAIL: {steps} finite losses expected"
                elif name != "eager" and "eager" in losses:
                    diff = max(abs(a - b) / abs(b) for a, b in zip(losses[name], losses["eager"]))
                    row.update(max_rel_diff=diff, tol=tol)
                    if diff > tol:
                        row["status"] = f"FAIL: losses differ from eager by {diff:.3g} (tolerance {tol:g})"
            except BaseException as e:  # SystemExit from the trainer's one-line errors too
                row = {"check": f"trainer {name}", "status": f"FAIL: {type(e).__name__}: {str(e)[:160]}"}
            emit({**row, "seconds": round(time.perf_counter() - t0, 2)})


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on CPU tensors
        import torch

        torch.set_num_threads(1)
    if args.part == "env":
        emit(environment(args.tiny))
    elif args.part == "kernels":
        check_kernels(args.tiny)
    else:
        check_trainer(args.tiny, args.steps, args.compile_backend)


if __name__ == "__main__":
    main()
