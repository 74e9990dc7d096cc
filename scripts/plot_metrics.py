"""Draw the loss and throughput curves of a training run (its metrics.csv) to a PNG.

    python scripts/plot_metrics.py out/demo/train                  # writes out/demo/train/metrics.png
    python scripts/plot_metrics.py out/a/metrics.csv out/b --out compare.png   # several runs on one figure
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lit_gpt.layout import METRICS_CSV
from lit_gpt.training.metrics import read_metrics
from lit_gpt.utils import atomic_write


def plot(runs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(12, 4.5))
    for csv_path in runs:
        rows = read_metrics(csv_path)
        label = f"{csv_path.parent.name} " if len(runs) > 1 else ""
        train = [r for r in rows if r["loss"] is not None]
        val = [r for r in rows if r["val_loss"] is not None]
        ax_loss.plot([r["tokens"] for r in train], [r["loss"] for r in train], label=f"{label}train")
        if val:
            ax_loss.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o--", label=f"{label}validation")
        speed = [r for r in train if r["tokens_per_s"] is not None]
        ax_speed.plot([r["step"] for r in speed], [r["tokens_per_s"] for r in speed], label=f"{label}tokens/s")
        if any(r["mfu"] is not None for r in speed):
            ax_mfu = ax_speed.twinx()
            ax_mfu.plot([r["step"] for r in speed if r["mfu"] is not None],
                        [100 * r["mfu"] for r in speed if r["mfu"] is not None], ":", label=f"{label}MFU")
            ax_mfu.set_ylabel("MFU (%)")
    ax_loss.set(xlabel="tokens", ylabel="cross-entropy loss", title="loss")
    ax_speed.set(xlabel="step", ylabel="tokens/s (all devices)", title="throughput")
    for ax in (ax_loss, ax_speed):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_write(out, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training out_dir(s) or metrics.csv file(s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="PNG to write (default: metrics.png next to the first metrics.csv)")
    args = parser.parse_args(argv)
    runs = [p / METRICS_CSV if p.is_dir() else p for p in args.runs]
    for p in runs:
        if not p.is_file():
            sys.exit(f"error: {p}: metrics file not found (train first, or point at a training out_dir)")
    out = args.out or runs[0].with_name("metrics.png")
    try:
        plot(runs, out)
    except (KeyError, ValueError) as e:
        sys.exit(f"error: {runs[0]}: not a lit_gpt metrics.csv ({e})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
