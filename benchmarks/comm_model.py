"""Predicted data-parallel communication per optimizer step, per rank, of each strategy of the trainer, for the seed
models' recipes on typical clusters, against the step's compute time at a target MFU. docs/scaling.md's tables are
this script's output (a model from formulas and nominal link speeds, not a measurement):

    python benchmarks/comm_model.py              # the tables of docs/scaling.md (MFU 0.5)
    python benchmarks/comm_model.py --mfu 0.4

Bytes per rank of ring collectives over a group of n ranks on S bytes: all-gather and reduce-scatter (n-1)/n x S,
all-reduce 2 (n-1)/n x S. Per optimizer step of A micro batches (gradients are synchronised on the last only):
  DDP                  all-reduce of the fp32 gradients (4 bytes/param)
  FSDP full            per micro batch: all-gather of the bf16 parameters for the forward, again of the Blocks' for
                       the backward (the root's stay gathered); per step: reduce-scatter of the fp32 gradients
  FSDP no reshard      the same without the backward's all-gather (--reshard_after_forward false)
  HSDP                 FSDP full within a node (--fsdp_mode hybrid), then an all-reduce of each rank's fp32
                       gradient shard (1/g of them) with its peers on the other nodes
Time = bytes / bus bandwidth: the link's speed per direction inside a node; a collective spanning nodes runs at
the node's network bandwidth (its rings cross each node boundary once); HSDP's g all-reduces across nodes (one per
local rank) share it. Nominal speeds: real collectives reach roughly 60-85% of them, so the times are lower bounds.
Compute per step = tokens per rank x FLOPs per token / (MFU x bf16 peak). FSDP prefetches its all-gathers and DDP
overlaps its all-reduce with the backward, so a step takes about max(compute, communication) when overlap works
and their sum when it does not. Bold: communication takes longer than compute; "comm-bound": even the fastest
strategy's does.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.training.speed_monitor import PEAK_BF16_TFLOPS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("DDP", "FSDP full", "FSDP no reshard", "HSDP")


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: int
    gpus: int  # per node
    intra: float  # GB/s per GPU per direction inside a node
    inter: float  # GB/s per node per direction between nodes (0 on one node)
    device: str  # key of PEAK_BF16_TFLOPS


CLUSTERS = [
    Cluster("4x RTX 4090, PCIe 4.0 via host (no P2P)", 1, 4, 25, 0, "RTX 4090"),
    Cluster("8x A100, NVLink 3", 1, 8, 300, 0, "A100"),
    Cluster("8x H100, NVLink 4", 1, 8, 450, 0, "H100 SXM"),
    Cluster("2x8 A100, 200 Gb/s per node", 2, 8, 300, 25, "A100"),
    Cluster("2x8 H100, 100 Gb/s per node", 2, 8, 450, 12.5, "H100 SXM"),
    Cluster("2x8 H100, 400 Gb/s per node", 2, 8, 450, 50, "H100 SXM"),
    Cluster("2x8 H100, 8x400 Gb/s per node", 2, 8, 450, 400, "H100 SXM"),
]
RECIPES = {"MicroLlama-300M": "microllama", "TinyLlama-1.1B": "tinyllama"}  # model -> configs/<recipe>.yaml


def all_gather(nbytes: float, n: int) -> float:
    return (n - 1) / n * nbytes


reduce_scatter = all_gather


def all_reduce(nbytes: float, n: int) -> float:
    return 2 * (n - 1) / n * nbytes


def root_params(config: Config) -> int:
    """Parameters outside the Blocks (embedding, lm_head, final norm): FSDP2's root unit."""
    heads = 1 if config.tie_embeddings else 2
    return heads * config.vocab_size * config.n_embd + config.n_embd


def step_bytes(strategy: str, params: int, block_params: int, accum: int, n: int, g: int) -> tuple[float, float]:
    """(bytes inside a node or over the whole group, bytes of HSDP's all-reduce across nodes) per rank per step."""
    if strategy == "DDP":
        return all_reduce(4 * params, n), 0.0
    group = g if strategy == "HSDP" else n
    gathers = 2 * params + (0 if strategy == "FSDP no reshard" else 2 * block_params)
    sharded = accum * all_gather(gathers, group) + reduce_scatter(4 * params, group)
    across = all_reduce(4 * params / g, n // g) if strategy == "HSDP" else 0.0
    return sharded, across


def comm_seconds(strategy: str, cluster: Cluster, sharded: float, across: float) -> float:
    spans_nodes = cluster.nodes > 1 and strategy != "HSDP"
    bandwidth = min(cluster.intra, cluster.inter) if spans_nodes else cluster.intra
    return sharded / (bandwidth * 1e9) + across / (cluster.inter / cluster.gpus * 1e9 if across else 1)


def rows(mfu: float):
    """One dict per (model, cluster): accumulation, compute time, each strategy's bytes and time."""
    for model, recipe in RECIPES.items():
        config = Config.from_name(model)
        args = yaml.safe_load((ROOT / "configs" / f"{recipe}.yaml").read_text())
        seq = args["block_size"] or config.block_size
        params = config.num_params()
        block_params = params - root_params(config)
        for cluster in CLUSTERS:
            n = cluster.nodes * cluster.gpus
            per_rank = args["global_batch_size"] / n  # sequences per rank per step
            accum = math.ceil(per_rank / args["micro_batch_size"])
            compute = per_rank * seq * config.flops_per_token(seq) / (mfu * PEAK_BF16_TFLOPS[cluster.device] * 1e12)
            comm = {}
            for strategy in STRATEGIES:
                if strategy == "HSDP" and cluster.nodes == 1:
                    continue  # one node: HSDP is FSDP full
                sharded, across = step_bytes(strategy, params, block_params, accum, n, cluster.gpus)
                comm[strategy] = (sharded + across, comm_seconds(strategy, cluster, sharded, across))
            yield {"model": model, "params": params, "cluster": cluster, "accum": accum, "compute": compute,
                   "comm": comm}


def cell(nbytes: float, seconds: float, compute: float) -> str:
    """"2.16 GB, 43 ms", in bold where communication takes longer than the step's compute."""
    text = f"{nbytes / 1e9:.2f} GB, {seconds * 1e3:,.0f} ms"
    return f"**{text}**" if seconds > compute else text


def table(mfu: float) -> str:
    lines = ["| model | cluster | accum | compute at MFU {:.2f} | ".format(mfu)
             + " | ".join(STRATEGIES) + " | fastest | comm-bound |",
             "|---" * (6 + len(STRATEGIES)) + "|"]
    for r in rows(mfu):
        cells = [cell(*r["comm"][s], r["compute"]) if s in r["comm"] else "= FSDP full" for s in STRATEGIES]
        best = min(r["comm"], key=lambda s: r["comm"][s][1])
        bound = r["comm"][best][1] > r["compute"]
        lines.append(f"| {r['model']} | {r['cluster'].name} | {r['accum']} | {r['compute'] * 1e3:,.0f} ms | "
                     + " | ".join(cells) + f" | {best} | {'yes' if bound else 'no'} |")
    return "\n".join(lines)


def state_gib(strategy: str, config: Config, n: int, g: int) -> float:
    """Model state per GPU, activations aside: fp32 parameters, fp32 gradients and AdamW's two moments (16 bytes a
    parameter) divided over the shard group, plus the bf16 parameters the forward keeps for the backward: under DDP
    autocast's copies of every weight; under FSDP the gathered root for the whole step and two Blocks (one
    computing, one prefetched), or every Block without reshard after forward."""
    params = config.num_params()
    if strategy == "DDP":
        return 18 * params / 2**30
    gathered = 2 * root_params(config) + 2 * 2 * (params - root_params(config)) / config.n_layer
    if strategy == "FSDP no reshard":
        gathered = 2 * params
    return (16 * params / (g if strategy == "HSDP" else n) + gathered) / 2**30


def memory_table() -> str:
    shapes = sorted({(c.nodes, c.gpus) for c in CLUSTERS})
    lines = ["| model | GPUs | " + " | ".join(STRATEGIES) + " |", "|---" * (2 + len(STRATEGIES)) + "|"]
    for model in RECIPES:
        config = Config.from_name(model)
        for nodes, g in shapes:
            cells = [f"{state_gib(s, config, nodes * g, g):.1f} GiB" if s != "HSDP" or nodes > 1 else "= FSDP full"
                     for s in STRATEGIES]
            lines.append(f"| {model} | {nodes}x{g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--mfu", type=float, default=0.5, help="model FLOPs utilisation of the compute (0-1]")
    args = parser.parse_args(argv)
    if not 0 < args.mfu <= 1:
        parser.error(f"--mfu {args.mfu} is not in (0, 1]")
    for model in RECIPES:
        config = Config.from_name(model)
        print(f"{model}: {config.num_params():,} parameters, {root_params(config):,} outside the Blocks")
    print("\nCommunication per optimizer step per rank (bytes moved, time at nominal link speed):\n")
    print(table(args.mfu))
    print("\nModel state per GPU (parameters, gradients, AdamW; activations aside):\n")
    print(memory_table())


if __name__ == "__main__":
    main()
