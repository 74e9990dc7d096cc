"""Throughput accounting: the bf16 peak table and MFU (model FLOPs utilisation).

MFU = tokens/s x FLOPs per token / peak, FLOPs per token from `Config.flops_per_token` (torchtitan's convention).
"""

from __future__ import annotations

import time
from typing import Optional, Union

import torch

# Dense bf16 tensor-core peak in TFLOP/s (no sparsity). Lightning's table lacks the RTX 4090 and H200.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,  # NVIDIA's datasheet: 1,671 with sparsity
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
    if "H100" in n:  # SXM parts report "80GB HBM3"; the PCIe card says PCIe; the NVL card says NVL
        return "H100 PCIe" if "PCIE" in n else "H100 NVL" if "NVL" in n else "H100 SXM"
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


class ThroughputMonitor:
    """Tokens/s (global and per device), MFU and ETA over a sliding window of recent optimizer steps.

    Call `update(step, tokens_seen)` after each optimizer step with the global token count; the window skips the
    first steps' warm-up noise naturally as it fills. `peak` is the per-device peak FLOP/s (None: MFU unknown).
    """

    def __init__(self, flops_per_token: float, world_size: int, peak: Optional[float] = None, window: int = 20) -> None:
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.peak = peak
        self.window = window
        self.history: list[tuple[float, int, int]] = []  # (time, step, tokens_seen)

    def start(self, step: int, tokens_seen: int, now: Optional[float] = None) -> None:
        """Marks the starting point (after setup or a resume) so the first window measures real work only."""
        self.history = [(time.perf_counter() if now is None else now, step, tokens_seen)]

    def update(self, step: int, tokens_seen: int, now: Optional[float] = None) -> None:
        self.history.append((time.perf_counter() if now is None else now, step, tokens_seen))
        del self.history[: max(0, len(self.history) - self.window - 1)]

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` (validation, a checkpoint save) out of the measured time: past points move forward."""
        self.history = [(t + seconds, s, n) for t, s, n in self.history]

    def compute(self, max_steps: Optional[int] = None) -> dict[str, Optional[float]]:
        """Returns tokens_per_s, tokens_per_s_per_device, mfu and eta_s (None where not yet measurable)."""
        out: dict[str, Optional[float]] = {"tokens_per_s": None, "tokens_per_s_per_device": None, "mfu": None,
                                           "eta_s": None}
        if len(self.history) < 2:
            return out
        (t0, s0, n0), (t1, s1, n1) = self.history[0], self.history[-1]
        dt = t1 - t0
        if dt <= 0 or s1 == s0:
            return out
        tps = (n1 - n0) / dt
        out["tokens_per_s"] = tps
        out["tokens_per_s_per_device"] = tps / self.world_size
        out["mfu"] = mfu(tps / self.world_size, self.flops_per_token, self.peak)
        if max_steps is not None:
            out["eta_s"] = max(0, max_steps - s1) * dt / (s1 - s0)
        return out
