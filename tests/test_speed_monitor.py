"""ThroughputMonitor arithmetic on a synthetic clock, and the plot script on a real metrics.csv layout."""

import subprocess
import sys
from pathlib import Path

import pytest

from lit_gpt.training.speed_monitor import ThroughputMonitor
from lit_gpt.training.metrics import CSV_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_mfu_eta_over_window():
    mon = ThroughputMonitor(flops_per_token=1e9, world_size=4, peak=1e14, window=3)
    mon.start(step=10, tokens_seen=10_000, now=100.0)  # e.g. after a resume at step 10
    assert mon.compute(max_steps=20)["tokens_per_s"] is None
    # 1000 tokens per step; steps take 1 s, then 2 s each
    for i, t in enumerate([101.0, 102.0, 104.0, 106.0, 108.0], start=11):
        mon.update(step=i, tokens_seen=i * 1000, now=t)
    out = mon.compute(max_steps=20)
    # window of 3 steps: steps 12 -> 15 took 6 s for 3000 tokens
    assert out["tokens_per_s"] == pytest.approx(500.0)
    assert out["tokens_per_s_per_device"] == pytest.approx(125.0)
    assert out["mfu"] == pytest.approx(125.0 * 1e9 / 1e14)
    assert out["eta_s"] == pytest.approx(5 * 2.0)  # 5 steps left at 2 s/step


def test_no_peak_means_no_mfu():
    mon = ThroughputMonitor(flops_per_token=1e9, world_size=1, peak=None)
    mon.start(0, 0, now=0.0)
    mon.update(1, 100, now=1.0)
    out = mon.compute()
    assert out["tokens_per_s"] == pytest.approx(100.0) and out["mfu"] is None and out["eta_s"] is None


def test_plot_metrics_writes_png(tmp_path):
    rows = [dict(step=s, tokens=s * 512, loss=8.0 - 0.1 * s, lr=1e-3, grad_norm=1.0, tokens_per_s=1000.0 + s,
                 tokens_per_s_per_device=500.0, mfu=0.3, eta_s=10.0) for s in range(1, 11)]
    rows.append(dict(step=10, tokens=5120, val_loss=7.0, val_ppl=1096.6))
    with open(tmp_path / "metrics.csv", "w") as f:
        f.write(",".join(CSV_COLUMNS) + "\n")
        for r in rows:
            f.write(",".join(str(r.get(c, "")) for c in CSV_COLUMNS) + "\n")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_metrics.py"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    png = (tmp_path / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_metrics.py"), str(tmp_path / "nope")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.strip() == f"error: {tmp_path / 'nope'}: " \
        "metrics file not found (train first, or point at a training out_dir)"


def test_excluded_pause_does_not_count():
    """A 10 s validation/checkpoint pause after step 2 leaves tokens/s at the training rate."""
    mon = ThroughputMonitor(flops_per_token=1.0, world_size=1, peak=None, window=10)
    mon.start(0, 0, now=0.0)
    mon.update(1, 100, now=1.0)
    mon.update(2, 200, now=2.0)
    mon.exclude(10.0)
    mon.update(3, 300, now=13.0)
    assert mon.compute(max_steps=4)["tokens_per_s"] == pytest.approx(100.0)
    assert mon.compute(max_steps=4)["eta_s"] == pytest.approx(1.0)


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"), ("NVIDIA GH200 480GB", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA L40S", "L40S"), ("Tesla T4", None),
])
def test_device_names_map_to_their_peak(name, key):
    """torch.cuda.get_device_name strings -> the peak table; an unknown GPU has no MFU rather than a wrong one."""
    from lit_gpt.training.speed_monitor import PEAK_BF16_TFLOPS, device_key

    assert device_key(name) == key
    assert key is None or key in PEAK_BF16_TFLOPS
