"""Training throughput of the real step (forward, backward, clip_grad_norm_, fused AdamW, bf16-mixed autocast):
this project eager / with kernels / compiled / both (one GPU, as the trainer runs it there) / both under FSDP2 in a
world of one process (bf16 parameters: each GPU's work in the multi-GPU recipe, minus the communication), kernels +
compile with each optional accelerator (attention through flash-attn 2 / flash-attn 3 / xformers, or xformers'
SwiGLU MLP; a row whose package is missing or fails its start-up probe is skipped, saying why), against
the peers that import here (HF transformers LlamaForCausalLM eager / compiled / with Liger kernels, litgpt GPT eager
/ compiled).

Each (variant, micro batch) runs in its own process, so an OOM or a monkey-patch (Liger) cannot leak into the
next row. Prints a Markdown table of tokens/s, MFU (FLOPs/token = Config.flops_per_token(T), peak from
lit_gpt.training.speed_monitor) and peak memory, then a breakdown of the step into parts timed on their own against
their floor (GEMMs and attention at the measured matmul rate, elementwise parts and AdamW at the measured copy
bandwidth).

  python benchmarks/train_throughput.py                          # MicroLlama-300M, T=2048, micro batch 8/16/32
  python benchmarks/train_throughput.py --model TinyLlama-1.1B --micro-batches 4 8
  python benchmarks/train_throughput.py --tiny                   # same code on the CPU in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OURS = ["lit_gpt eager", "lit_gpt kernels", "lit_gpt compile", "lit_gpt kernels+compile",
        "lit_gpt kernels+compile fsdp"]
PEERS = {  # variant -> module that must import
    "hf eager": "transformers", "hf compile": "transformers", "hf liger": "liger_kernel",
    "litgpt eager": "litgpt", "litgpt compile": "litgpt",
}
# ours with an optional accelerator: variant -> (module that must import, attention backend, SwiGLU backend)
ACCELERATED = {
    "lit_gpt kernels+compile flash_attn": ("flash_attn", "flash_attn", "triton"),
    "lit_gpt kernels+compile flash_attn3": ("flash_attn_interface", "flash_attn3", "triton"),
    "lit_gpt kernels+compile xformers": ("xformers", "xformers", "triton"),
    "lit_gpt kernels+compile xformers swiglu": ("xformers", None, "xformers"),  # None: --attention's
}
VARIANTS = OURS + list(ACCELERATED) + list(PEERS)
RESULT_TAG = "RESULT "
ROW_KEYS = ["model", "variant", "micro_batch", "tokens_per_s", "mfu", "peak_gib", "device", "status"]


def result_row(model: str, variant: str, micro_batch: int, **measured) -> dict:
    """A row with every key of the results schema (benchmarks/README.md), None for what was not measured."""
    return {**dict.fromkeys(ROW_KEYS), "model": model, "variant": variant, "micro_batch": micro_batch, **measured}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="MicroLlama-300M", help="lit_gpt config name (default MicroLlama-300M)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the config's block size)")
    p.add_argument("--micro-batches", type=int, nargs="+", default=[8, 16, 32], help="micro batch sizes to run")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS, metavar="VARIANT",
                   help=f"rows to run (default all that import): {', '.join(VARIANTS)}")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend for the compiled rows")
    p.add_argument("--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode for the compiled rows (the trainer's --compile_mode)")
    p.add_argument("--attention", default="auto",
                   help="lit_gpt attention backend: auto, cudnn, flash_attn, flash_attn3, xformers, sdpa")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-part breakdown of the step")
    p.add_argument("--timeout", type=int, default=900, help="seconds allowed per variant process")
    p.add_argument("--memory-cap", type=float, default=None, metavar="GIB",
                   help="cap each row's CUDA allocator at this many GiB (torch.cuda.set_per_process_memory_fraction): "
                        "does the step fit a smaller card, e.g. 24 for an RTX 4090")
    p.add_argument("--tiny", action="store_true",
                   help="the 'tiny' config on the CPU in float32, T=16, micro batch 1, 1+1 steps (a smoke test)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run: rows not started by then are reported as skipped (so a run "
                        "with a wall-clock limit still prints its table)")
    p.add_argument("--json", type=Path, default=None,
                   help="also write all results to this JSON file (rewritten after every row, so a killed run "
                        "keeps what it measured)")
    p.add_argument("--md", type=Path, default=None,
                   help="also write the printed tables to this Markdown file (rewritten after every row)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one variant
    p.add_argument("--micro-batch", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.requested_model = args.model  # still checked under --tiny, so the rehearsal catches a typo in it
    if args.tiny:
        args.model, args.seq_len, args.micro_batches, args.warmup, args.steps = "tiny", 16, [1], 1, 1
    return args


# ---- building each variant ------------------------------------------------------------------------------------
def build(variant: str, config, device, compile_backend: str, compile_mode: str = "default"):
    """Returns (model, loss_fn(model, idx, targets) -> scalar loss)."""
    import torch
    import torch.nn.functional as F

    if variant.startswith("lit_gpt"):
        from lit_gpt import GPT

        model = GPT(config, kernels="kernels" in variant).to(device)

        def loss_fn(m, idx, targets):
            return m(idx, targets)
    elif variant.startswith("hf"):
        if variant == "hf liger":
            from liger_kernel.transformers import apply_liger_kernel_to_llama

            apply_liger_kernel_to_llama()  # patches the HF Llama classes in this process only
        from transformers import LlamaConfig, LlamaForCausalLM

        hf_config = LlamaConfig(**config.to_hf())
        hf_config._attn_implementation = "sdpa"
        model = LlamaForCausalLM(hf_config).to(device)

        def loss_fn(m, idx, targets):  # labels = inputs: HF shifts inside (T-1 predicted tokens per row)
            return m(input_ids=idx, labels=idx).loss
    else:
        from litgpt.config import Config as LitConfig
        from litgpt.model import GPT as LitGPT

        lit_config = LitConfig(
            name=config.name, block_size=config.block_size, vocab_size=config.vocab_size,
            padded_vocab_size=config.vocab_size, n_layer=config.n_layer, n_head=config.n_head,
            n_embd=config.n_embd, n_query_groups=config.n_query_groups, rotary_percentage=1.0,
            parallel_residual=False, bias=False, norm_class_name="RMSNorm", norm_eps=config.norm_eps,
            mlp_class_name="LLaMAMLP", intermediate_size=config.intermediate_size, rope_base=int(config.rope_base))
        model = LitGPT(lit_config).to(device)
        try:
            from litgpt.utils import chunked_cross_entropy as litgpt_loss
        except ImportError:
            litgpt_loss = None

        def loss_fn(m, idx, targets):
            logits = m(idx)
            if litgpt_loss is not None:
                return litgpt_loss(logits, targets)
            return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    if "compile" in variant:
        if variant.startswith("lit_gpt"):  # exactly as the trainer's --compile does it: each Block
            from lit_gpt.training.parallel import wrap_blocks

            wrap_blocks(model, activation_checkpointing=False, compile=True, backend=compile_backend,
                        mode=compile_mode)
        else:
            model = torch.compile(model, backend=compile_backend, mode=compile_mode)
    if variant.endswith("fsdp"):  # the multi-GPU recipe's per-device work: FSDP2 as the trainer applies it
        model = fully_shard_alone(model, device)
    return model, loss_fn


def fully_shard_alone(model, device):
    """FSDP2 over a world of one process (no communication to wait for): bf16 parameters and activations with fp32
    master weights and gradients, as each GPU of an FSDP run computes them."""
    import socket

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lit_gpt.training.parallel import parallelize_fsdp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1,
                            init_method=f"tcp://127.0.0.1:{port}")
    mesh = init_device_mesh(device.type, (1,), mesh_dim_names=("data_parallel",))
    return parallelize_fsdp(model, mesh, precision="bf16-mixed" if device.type == "cuda" else "32-true")


def run_worker(args) -> dict:
    """One variant at one micro batch: warm-up, then timed steps. Returns the result row."""
    import torch

    from benchmarks.timing import synchronize
    from lit_gpt import Config
    from lit_gpt.training.speed_monitor import mfu, peak_flops

    device = worker_device(args)
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny shapes: threads only add contention
    config = Config.from_name(args.model)
    T = args.seq_len or config.block_size
    B = args.micro_batch
    row = {"variant": args.worker, "micro_batch": B, "seq_len": T, "model": config.name,
           "torch": torch.__version__}
    if args.memory_cap is not None and device.type == "cuda":  # OOM past the cap, as on the smaller card
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap * 2**30 / total), device)
    problem = use_accelerators(args, device)
    if problem:
        return {**row, "status": f"skipped ({problem})", "device": device_name(device)}
    torch.manual_seed(0)
    model, loss_fn = build(args.worker, config, device, args.compile_backend, args.compile_mode)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    data = torch.randint(0, config.vocab_size, (B, T + 1), device=device)
    idx, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    def step():
        with autocast:
            loss = loss_fn(model, idx, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for i in range(args.warmup):
        loss = step()
        if i == 0:  # compilation happens here: its time is what a short run has to plan for
            synchronize(device)
            row["first_step_s"] = time.perf_counter() - t0
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(device)
    elapsed = time.perf_counter() - t0
    tokens_per_s = B * T * args.steps / elapsed
    peak = peak_flops(device)
    row.update(status="ok", tokens_per_s=tokens_per_s, step_ms=elapsed / args.steps * 1e3,
               mfu=mfu(tokens_per_s, config.flops_per_token(T), peak), loss=float(loss.detach()),
               peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
               device=device_name(device))
    return row


def use_accelerators(args, device) -> str:
    """Sets the row's attention and SwiGLU backends; returns why the row cannot run as named ('' when it can): an
    accelerator variant off CUDA, or whose backend fails its start-up probe (the trainer would fall back)."""
    import torch

    from lit_gpt.kernels.attention import describe_attention, resolve_backend, set_attention_backend
    from lit_gpt.kernels.swiglu import set_swiglu_backend

    _, attention, swiglu = ACCELERATED.get(args.worker, (None, None, "triton"))
    set_attention_backend(attention or args.attention)
    set_swiglu_backend(swiglu)
    if args.worker not in ACCELERATED:
        return ""
    if device.type != "cuda":
        return "needs a CUDA GPU"
    line = describe_attention(device, torch.bfloat16)  # the start-up probe, as in the trainer
    print(line, file=sys.stderr, flush=True)
    if attention and resolve_backend(device, torch.bfloat16) != attention:
        return line
    return ""


def worker_device(args):
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_breakdown(args) -> dict:
    import torch

    from benchmarks.step_breakdown import breakdown
    from lit_gpt import Config
    from lit_gpt.kernels.attention import set_attention_backend

    set_attention_backend(args.attention)
    if args.tiny:
        torch.set_num_threads(1)
    config = Config.from_name(args.model)
    rows = breakdown(config, args.seq_len or config.block_size, args.micro_batch, tiny=args.tiny)
    return {"variant": "breakdown", "micro_batch": args.micro_batch, "status": "ok", "parts": rows}


def worker_main(args) -> None:
    import torch

    try:
        row = run_breakdown(args) if args.worker == "breakdown" else run_worker(args)
    except torch.OutOfMemoryError:
        row = {"variant": args.worker, "micro_batch": args.micro_batch, "status": "OOM"}
    except Exception as e:  # a peer's incompatibility is a row, not a crash of the whole table
        status = "OOM" if "out of memory" in str(e).lower() else f"error: {type(e).__name__}: {str(e)[:160]}"
        row = {"variant": args.worker, "micro_batch": args.micro_batch, "status": status}
    row.setdefault("device", device_name(worker_device(args)))
    if args.memory_cap is not None:
        row["memory_cap_gib"] = args.memory_cap
    print(RESULT_TAG + json.dumps(row), flush=True)
    if torch.distributed.is_initialized():  # the fsdp variant's world of one
        torch.distributed.destroy_process_group()


# ---- the parent: one process per row ---------------------------------------------------------------------------
def child_command(args, variant: str, micro_batch: int) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--micro-batch", str(micro_batch),
           "--model", args.model, "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--compile-backend", args.compile_backend, "--compile-mode", args.compile_mode,
           "--attention", args.attention]
    if args.seq_len:
        cmd += ["--seq-len", str(args.seq_len)]
    if args.memory_cap is not None:
        cmd += ["--memory-cap", str(args.memory_cap)]
    if args.tiny:
        cmd.append("--tiny")
    return cmd


def child_env(args) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if args.tiny:  # the kernels run interpreted on the CPU, like in the tests
        env["TRITON_INTERPRET"] = "1"
    return env


def run_row(args, variant: str, micro_batch: int, timeout: float) -> dict:
    """Runs one row in its own process. Every row has model, variant, micro_batch, status and row_s (the process's
    wall time: start, imports, compilation, steps), whatever happened to the process."""
    started = time.monotonic()
    try:
        proc = subprocess.run(child_command(args, variant, micro_batch), capture_output=True, text=True,
                              timeout=timeout, env=child_env(args), cwd=ROOT)
        row = next((json.loads(line[len(RESULT_TAG):]) for line in proc.stdout.splitlines()
                    if line.startswith(RESULT_TAG)), None)
        if row is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            row = {"status": f"crashed (exit {proc.returncode}): {tail[:160]}"}
    except subprocess.TimeoutExpired:
        row = {"status": f"timeout after {timeout:.0f}s"}
    return {**result_row(args.model, variant, micro_batch), **row, "row_s": round(time.monotonic() - started, 1)}


def required_module(variant: str):
    return PEERS.get(variant) or ACCELERATED.get(variant, (None,))[0]


def available(variant: str) -> bool:
    module = required_module(variant)
    return module is None or importlib.util.find_spec(module) is not None


def fmt(row: dict) -> str:
    seconds = f"{row['row_s']:.0f}" if "row_s" in row else ""
    if row.get("status") != "ok":
        return f"| {row['variant']} | {row['micro_batch']} | {row['status']} | | | | | {seconds} |"
    mfu = "n/a" if row.get("mfu") is None else f"{row['mfu']:.2f}"
    mem = "n/a" if row.get("peak_gib") is None else f"{row['peak_gib']:.1f}"
    return (f"| {row['variant']} | {row['micro_batch']} | {row['tokens_per_s']:,.0f} | {mfu} | {mem} | "
            f"{row['step_ms']:.1f} | {row.get('first_step_s', 0):.1f} | {seconds} |")


def table(rows: list[dict]) -> str:
    """Markdown table of result rows. 'first step s' includes compilation; 'row s' is the row's whole process."""
    lines = ["| variant | micro batch | tokens/s | MFU | peak GiB | step ms | first step s | row s |",
             "|---|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [fmt(r) for r in rows])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    from lit_gpt import Config

    try:
        config = Config.from_name(args.model)
        Config.from_name(args.requested_model)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if any(b < 1 for b in args.micro_batches) or args.steps < 1 or args.warmup < 0:
        sys.exit("error: micro batches and --steps must be >= 1, --warmup >= 0")
    T = args.seq_len or config.block_size
    started = time.monotonic()

    def remaining() -> float:  # seconds a row may take: the rest of --budget, at most --timeout
        left = args.timeout if args.budget is None else args.budget - (time.monotonic() - started)
        return min(args.timeout, left)

    def out_of_budget() -> bool:
        return remaining() <= 0

    rows, skipped, breakdown = [], [], ([], "")

    def report() -> str:  # what is printed at the end, and written to --md after every row
        device = next((r["device"] for r in rows if r.get("device")), "n/a")
        cap = "" if args.memory_cap is None else f", memory capped at {args.memory_cap:g} GiB"
        text = f"## {config.name}, T={T}, device: {device}{cap}\n\n{table(rows)}\n"
        if skipped:
            text += f"\nnot run: {'; '.join(skipped)}\n"
        return text + breakdown[1]

    for variant in args.variants:
        if not available(variant):
            skipped.append(f"{variant} ({required_module(variant)} not installed)")
            continue
        for micro_batch in args.micro_batches:
            if out_of_budget():
                rows.append(result_row(args.model, variant, micro_batch,
                                       status=f"skipped (--budget {args.budget:g}s used)"))
                continue
            print(f"running {variant}, micro batch {micro_batch} ...", file=sys.stderr, flush=True)
            row = run_row(args, variant, micro_batch, remaining())
            print(f"  {fmt(row)}", file=sys.stderr, flush=True)
            rows.append(row)
            write_outputs(args, rows, breakdown[0], report())
    if not args.no_breakdown:
        if out_of_budget():
            breakdown = [], f"\nstep breakdown skipped: --budget {args.budget:g}s used\n"
        else:
            breakdown = measure_breakdown(args, rows, remaining())
    print("\n" + report(), end="")
    write_outputs(args, rows, breakdown[0], report())
    if our_failures(rows):  # a peer's failure is a row; ours is a bug
        sys.exit(f"error: lit_gpt rows failed: {'; '.join(our_failures(rows))}")


def our_failures(rows: list[dict]) -> list[str]:
    """lit_gpt rows that neither measured, ran out of memory, nor were skipped by the budget."""
    return [f"{r['variant']} (micro batch {r['micro_batch']}): {r['status']}" for r in rows
            if r["variant"].startswith("lit_gpt") and r["status"] != "OOM"
            and not r["status"].startswith(("ok", "skipped"))]


def measure_breakdown(args, rows: list[dict], timeout: float) -> tuple[list[dict], str]:
    """Times each part of the step alone (in its own process); returns the parts and their table against the best
    kernels row."""
    from benchmarks.step_breakdown import breakdown_table

    micro_batch = 16 if 16 in args.micro_batches else args.micro_batches[0]
    print(f"measuring the step breakdown at micro batch {micro_batch} ...", file=sys.stderr, flush=True)
    result = run_row(args, "breakdown", micro_batch, timeout)
    if result.get("status") != "ok":
        return [], f"\nstep breakdown failed: {result.get('status')}\n"
    ours = [r for r in rows if "kernels" in r["variant"] and r.get("status") == "ok" and r["micro_batch"] == micro_batch]
    best = min((r["step_ms"] for r in ours), default=None)
    return result["parts"], (f"\n### Step breakdown, micro batch {micro_batch} (lit_gpt with kernels, each part timed "
                             f"alone)\n\n{breakdown_table(result['parts'], best)}\n")


def write_outputs(args, rows: list[dict], breakdown_rows: list[dict], report: str) -> None:
    """--json and --md, rewritten whole (atomically) after every row: a run cut off still leaves what it measured."""
    from lit_gpt.utils import atomic_write

    device = next((r["device"] for r in rows if r.get("device")), None)
    for row in rows:  # rows whose process died before it could say which device it ran on
        row["device"] = row.get("device") or device
    if args.json is not None:
        with atomic_write(args.json) as f:
            f.write(json.dumps({"rows": rows, "breakdown": breakdown_rows}, indent=2) + "\n")
    if args.md is not None:
        with atomic_write(args.md) as f:
            f.write(report)


if __name__ == "__main__":
    main()
