"""What a checkpoint costs the training loop: saved at once (`--async_save false`) vs in the background (the
default), against the same steps with no save at all.

One process trains a model of the given shape with AdamW (the optimizer state is two thirds of a checkpoint) and
saves every `--save_every` steps through the trainer's own Checkpointer (lit_gpt.training.checkpointer: the same
staging, writing, hashing and renaming). Per mode it prints the mean step time, how long each save call held the
loop (the whole write at once; the copy to CPU memory in the background), when the background write finished, and
the training time lost per save: (run time - steps x the no-save step time) / saves, which also counts steps slowed
down by a write competing for the CPU, memory bandwidth or the disk.

    python benchmarks/checkpoint_cost.py                                      # CPU: TinyLlama-120M, block 256
    python benchmarks/checkpoint_cost.py --accelerator cuda --precision bf16-mixed --model_name MicroLlama-300M \\
        --block_size 2048 --micro_batch_size 8
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def run_mode(mode: str, args, out_dir: Path) -> dict:
    from lightning.fabric import Fabric

    from lit_gpt.config import Config
    from lit_gpt.model import GPT
    from benchmarks.timing import synchronize
    from lit_gpt.training.checkpointer import Checkpointer

    fabric = Fabric(accelerator=args.accelerator, devices=1, precision=args.precision)
    config = Config.from_name(args.model_name, block_size=args.block_size)
    torch.manual_seed(0)
    with fabric.init_module():
        model = GPT(config)
    model = fabric.setup(model)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-4, fused=False))
    checkpointer = Checkpointer(fabric, out_dir, "single", keep_last_k=1)
    x = torch.randint(0, config.vocab_size, (args.micro_batch_size, args.block_size + 1), device=fabric.device)

    def step() -> None:
        loss = model(x[:, :-1], x[:, 1:])
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(fabric.device)

    for _ in range(args.warmup):
        step()
    pauses, step_times = [], []
    start = time.perf_counter()
    for i in range(1, args.steps + 1):
        t0 = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - t0)
        if mode != "none" and i % args.save_every == 0 and i < args.steps:  # a run's last save is made at once
            t0 = time.perf_counter()
            checkpointer.save(i, {"model": model, "optimizer": optimizer, "step": i}, config,
                              background=mode == "background")
            pauses.append(time.perf_counter() - t0)
    loop = time.perf_counter() - start
    t0 = time.perf_counter()
    checkpointer.wait()  # the last background write, if still going
    drain = time.perf_counter() - t0
    nbytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return {"mode": mode, "loop_s": loop, "drain_s": drain, "step_s": sum(step_times) / len(step_times),
            "pauses": pauses, "bytes": nbytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name", default="TinyLlama-120M")
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--micro_batch_size", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per mode")
    parser.add_argument("--save_every", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where the checkpoints go (default: a temp folder)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (a rehearsal of the script)")
    args = parser.parse_args()
    if args.tiny:
        args.model_name, args.block_size, args.accelerator, args.precision = "tiny", 64, "cpu", "32-true"

    rows = []
    for mode in ("none", "at once", "background"):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp, contextlib.redirect_stdout(sys.stderr):
            rows.append(run_mode(mode, args, Path(tmp)))  # the trainer's "saved checkpoint" lines: stderr
        print(f"  {mode}: {rows[-1]['loop_s']:.1f} s", file=sys.stderr, flush=True)
    base = rows[0]["step_s"]
    saves = (args.steps - 1) // args.save_every
    print(f"\n{args.model_name}, block {args.block_size}, micro batch {args.micro_batch_size}, {args.accelerator} "
          f"{args.precision}, AdamW; {args.steps} steps, a save every {args.save_every} "
          f"({rows[1]['bytes'] / 1e9:.2f} GB per checkpoint); {time.strftime('%Y-%m-%d')}, torch {torch.__version__}\n")
    print("| saves | step time (s) | loop held per save (s) | write done after the loop (s) | run time (s) "
          "| training time lost per save (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        pause = sum(r["pauses"]) / len(r["pauses"]) if r["pauses"] else 0.0
        lost = (r["loop_s"] + r["drain_s"] - args.steps * base) / saves if r["pauses"] else 0.0
        print(f"| {r['mode']} | {r['step_s']:.3f} | {pause:.2f} | {r['drain_s']:.2f} | {r['loop_s']:.1f} "
              f"| {lost:.2f} |")


if __name__ == "__main__":
    main()
