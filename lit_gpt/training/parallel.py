"""How a model is spread over devices and compiled: FSDP2 sharding and the per-Block wrappers (activation
checkpointing, torch.compile). Apart from both the model and the loop, so benchmarks use exactly what training does."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn

from lit_gpt.model import GPT
from lit_gpt.utils import TrainError


def fabric_strategy(strategy_name: str, world_size: int, precision: str) -> Any:
    """The Fabric strategy for "fsdp" (FSDP2 through ModelParallelStrategy), "ddp" or "single"."""
    if strategy_name == "fsdp":
        from lightning.fabric.strategies import ModelParallelStrategy

        return ModelParallelStrategy(parallelize_fn=partial(parallelize_fsdp, precision=precision),
                                     data_parallel_size=world_size, tensor_parallel_size=1)
    if strategy_name == "ddp":
        return "ddp"
    if world_size > 1:
        raise TrainError(f"strategy 'single' runs one process, but {world_size} devices were requested")
    return "auto"


def parallelize_fsdp(model: nn.Module, device_mesh, precision: str) -> nn.Module:
    """FSDP2: shard each Block, then the root (embedding, final norm, lm_head). bf16 compute, fp32 reductions.
    `device_mesh` has a "data_parallel" dim (Fabric's ModelParallelStrategy makes it; the benchmark makes a 1-D one)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = device_mesh["data_parallel"]
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if "bf16" in precision else None
    kwargs = {"mesh": mesh} if mp is None else {"mesh": mesh, "mp_policy": mp}
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def wrap_blocks(model: GPT, activation_checkpointing: bool, compile: bool, backend: str = "inductor",
                mode: str = "default") -> None:
    """Per-Block activation checkpointing and torch.compile, in place (parameter names stay unchanged). Blocks are
    FSDP2's wrapping unit too; all of them share one compiled graph (compiled once, not once per layer).
    benchmarks/train_throughput.py compiles through here, so its numbers are the trainer's."""
    for block in model.blocks:
        if activation_checkpointing:
            from torch.distributed._composable import checkpoint

            checkpoint(block)
        if compile:
            block.compile(backend=backend, mode=mode)
