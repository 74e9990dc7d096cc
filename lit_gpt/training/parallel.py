"""How a model is spread over devices and compiled: FSDP2 sharding and the per-Block wrappers (activation
checkpointing, torch.compile). Apart from both the model and the loop, so benchmarks use exactly what training does."""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
import torch.nn as nn

from lit_gpt.model import GPT
from lit_gpt.utils import TrainError


def fabric_strategy(strategy_name: str, world_size: int, precision: str, shard_size: Optional[int] = None,
                    reshard_after_forward: bool = True) -> Any:
    """The Fabric strategy for "fsdp" (FSDP2 through ModelParallelStrategy), "ddp" or "single". `shard_size` < the
    world size makes fsdp hybrid (HSDP, see parallelize_fsdp)."""
    if strategy_name == "fsdp":
        from lightning.fabric.strategies import ModelParallelStrategy

        if shard_size is not None and (shard_size < 1 or world_size % shard_size):
            raise TrainError(f"shard_size {shard_size} does not divide the {world_size} processes into equal shard "
                             f"groups: pick a divisor of {world_size} (usually the devices per node)")
        fn = partial(parallelize_fsdp, precision=precision, shard_size=shard_size,
                     reshard_after_forward=reshard_after_forward)
        return ModelParallelStrategy(parallelize_fn=fn, data_parallel_size=world_size, tensor_parallel_size=1)
    if strategy_name == "ddp":
        return "ddp"
    if world_size > 1:
        raise TrainError(f"strategy 'single' runs one process, but {world_size} devices were requested")
    return "auto"


def parallelize_fsdp(model: nn.Module, device_mesh, precision: str, shard_size: Optional[int] = None,
                     reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2: shard each Block, then the root (embedding, final norm, lm_head). bf16 compute, fp32 reductions.
    `device_mesh` has a "data_parallel" dim (Fabric's ModelParallelStrategy makes it; the benchmark makes a 1-D one).
    With `shard_size` below its size, HSDP: a ("replicate", "shard") mesh whose rows are groups of `shard_size`
    consecutive ranks (one node each when shard_size is the devices per node); parameters are sharded along a row
    and replicated down the columns, gradients reduce-scattered in the row, then all-reduced across rows.
    `reshard_after_forward=False` keeps each Block's gathered parameters from its forward to its backward."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = device_mesh["data_parallel"]
    if shard_size is not None and shard_size < mesh.size():
        mesh = hybrid_mesh(mesh.device_type, mesh.size(), shard_size)
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if "bf16" in precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, **kwargs)
    # the root's parameters (embedding, lm_head) are used first and last: the backward needs them again at once
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    return model


def hybrid_mesh(device_type: str, world_size: int, shard_size: int):
    """The 2-D ("replicate", "shard") device mesh of HSDP: world_size / shard_size rows of shard_size ranks."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world_size // shard_size, shard_size), mesh_dim_names=("replicate", "shard"))


def describe_sharding(model: nn.Module, reshard_after_forward: bool) -> str:
    """What differs from plain FSDP2 in how `model` is spread, read from its parameters' mesh: "" (not sharded, or
    full shard), " (hybrid: 2 replicas x 4 shards)", " (no reshard after forward)" or both."""
    mesh = getattr(next(model.parameters()), "device_mesh", None)
    if mesh is None:
        return ""
    parts = ["hybrid: {} replicas x {} shards".format(*mesh.shape)] if mesh.ndim == 2 else []
    parts += [] if reshard_after_forward else ["no reshard after forward"]
    return f" ({', '.join(parts)})" if parts else ""


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
