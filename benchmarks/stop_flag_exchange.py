"""Time the trainer's per-step stop-flag exchange (lit_gpt/training/loop.py, Trainer._stop_requested) in 2 CPU processes.

Each simulated step does some matmuls and a blocking gradient-sized all-reduce (which keeps the ranks in lockstep, as
DDP/FSDP do), then exchanges the 1-float stop flag the trainer's way (non-blocking on a gloo group, waited one step
later) or blocking. Prints the time spent inside the exchange per step, and the step time, for each.

    python benchmarks/stop_flag_exchange.py --steps 300
"""

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, port: int, steps: int, matmuls: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    group = dist.new_group(backend="gloo")
    a, grad = torch.randn(192, 192), torch.randn(100_000)
    results = {}
    for mode in ("none", "non-blocking", "blocking") * 2:  # twice: the first round warms up
        dist.barrier()
        start, spent, pending, flag = time.perf_counter(), 0.0, None, None
        for _ in range(steps):
            for _ in range(matmuls):
                a = torch.tanh(a @ a)
            dist.all_reduce(grad)
            t0 = time.perf_counter()
            if mode == "non-blocking":
                if pending is not None:
                    pending.wait()
                    bool(flag.item() > 0)
                flag = torch.tensor([0.0])
                pending = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group, async_op=True)
            elif mode == "blocking":
                flag = torch.tensor([0.0])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
                bool(flag.item() > 0)
            spent += time.perf_counter() - t0
        if pending is not None:
            pending.wait()
        results[mode] = ((time.perf_counter() - start) / steps * 1e3, spent / steps * 1e3)
    if rank == 0:
        for mode, (step_ms, exchange_ms) in results.items():
            print(f"{mode:>12}: step {step_ms:7.2f} ms, in the flag exchange {exchange_ms:6.3f} ms")
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--matmuls", type=int, default=40, help="192x192 matmuls per simulated step")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, args.steps, args.matmuls), nprocs=2)


if __name__ == "__main__":
    main()
