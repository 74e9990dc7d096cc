"""Throughput accounting: the bf16 peak table and MFU (model FLOPs utilisation).

MFU = tokens/s x FLOPs per token / peak, FLOPs per token from `Config.flops_per_token` (torchtitan's convention).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

# Dense bf16 tensor-core peak in TFLOP/s (no sparsity). Lightning's table lacks the RTX 4090 and H200.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H200": 989.0,
    "A100": 312.0,
    "A10G": 125.0,
    "L40S": 362.0,
    "RTX 4090": 165.0,  # with fp32 accumulation
    "RTX 3090": 71.0,
}


def device_key(name: str) -> Optional[str]:
    """Maps a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3') to a key of PEAK_BF16_TFLOPS, or None."""
    n = name.upper()
    if "H200" in n or "GH200" in n:
        return "H200"
    if "H100" in n:
        # SXM parts report HBM3; PCIe parts say PCIe. The NVL (PCIe form factor, HBM3) runs near SXM clocks.
        return "H100 PCIe" if "PCIE" in n else "H100 SXM"
    for key in ("A100", "A10G", "L40S", "RTX 4090", "RTX 3090"):
        if key.upper() in n:
            return key
    return None


def peak_flops(device: Union[torch.device, str, int, None] = None) -> Optional[float]:
    """Peak dense bf16 FLOP/s of a CUDA device (by `torch.cuda.get_device_name`), None when unknown or on CPU."""
    if isinstance(device, str) and not device.startswith("cuda"):
        return None
    if isinstance(device, torch.device) and device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return None
    key = device_key(torch.cuda.get_device_name(device))
    return None if key is None else PEAK_BF16_TFLOPS[key] * 1e12


def mfu(tokens_per_s: float, flops_per_token: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation in [0, 1]; None when the peak is unknown (CPU, unlisted GPU)."""
    if not peak:
        return None
    return tokens_per_s * flops_per_token / peak
