"""Small launch helpers shared by the Triton kernels."""

from __future__ import annotations

import functools
from typing import Optional

import torch


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype when autocast is enabled for this device type, else None."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def unit_stride(t: torch.Tensor) -> torch.Tensor:
    """`t` with a unit stride in its last dim, as the kernels index it (a copy only when it is strided)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., C) -> (N, C) with a unit column stride (a copy only when the last dim is strided)."""
    return unit_stride(t.reshape(-1, t.shape[-1]))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_programs(n_rows: int, device: torch.device) -> int:
    """Programs for kernels that loop over rows and write one partial per program (a few waves of the SMs)."""
    if device.type != "cuda":
        return max(1, min(n_rows, 8))
    index = device.index if device.index is not None else torch.cuda.current_device()
    return max(1, min(n_rows, 4 * _sm_count(index)))


def row_warps(block: int) -> int:
    """Warps for a program that holds `block` elements of one row: ~8 elements per thread, 4..16 warps."""
    return min(16, max(4, block // 256))
