"""Tokens to quality: the seed recipe (AdamW, cosine) against --lr_schedule wsd and --optimizer muon.

Trains the same model on the same data with each arm (adamw+cosine, adamw+wsd, muon+cosine, muon+wsd) and a few
seeds, through the trainer itself (lit_gpt.training, one process per run), validating every --eval-interval steps.
The target is the adamw+cosine arm's final validation loss (mean over its seeds); the table gives, per arm, the
tokens each seed needed to reach it (linearly interpolated between evaluations; "-" if never reached), their ratio to
adamw+cosine's, and the final validation loss, each as mean and min-max over seeds. All arms share one learning
rate (Muon with adjust_lr_fn="match_rms_adamw", whose point is that AdamW's lr and weight decay carry over).

    python benchmarks/tokens_to_loss.py                    # CPU: the debug model on the bundled sample corpus
    python benchmarks/tokens_to_loss.py --steps 120 --seeds 2 --md table.md --plot curves.png
    python benchmarks/tokens_to_loss.py --microllama --data data/slimpajama    # GPU: MicroLlama-300M, 4e-4

--data is a folder with train/ and validation/ packed chunks (scripts/prepare_slimpajama.py); by default the
bundled sample (data/sample_slimpajama, ~1M tokens) is tokenized into the work folder. MicroLlama size needs real
data: 2000 steps of 48 x 2048 tokens would repeat the sample ~100 times.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_gpt.layout import METRICS_CSV  # noqa: E402
from lit_gpt.training.metrics import read_metrics  # noqa: E402

ARMS = [("adamw", "cosine"), ("adamw", "wsd"), ("muon", "cosine"), ("muon", "wsd")]
# CPU: sized for the shared 2-core test machine (2-3 s per step there under load); lr 3e-3 as in pretrain/debug.py
# (the seed recipe's 4e-4 barely moves so small a model in 60 steps), the same for every arm
CPU = dict(model="debug", block_size=64, batch=8, micro_batch=8, steps=60, lr=3e-3, warmup=6, eval_interval=6,
           eval_iters=4, seeds=2)
MICROLLAMA = dict(model="MicroLlama-300M", block_size=2048, batch=48, micro_batch=12, steps=2000, lr=4e-4,
                  warmup=200, eval_interval=100, eval_iters=20, seeds=3)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--microllama", action="store_true", help="GPU preset: " + ", ".join(
        f"{k} {v}" for k, v in MICROLLAMA.items()) + " (CPU default: " + ", ".join(f"{k} {v}" for k, v in CPU.items())
        + ")")
    for key, value in CPU.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None, help="(default: the preset's)")
    p.add_argument("--arms", default=",".join(f"{o}+{s}" for o, s in ARMS), help="optimizer+schedule pairs")
    p.add_argument("--data", type=Path, default=None, help="folder with train/ and validation/ chunks")
    p.add_argument("--work-dir", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    p.add_argument("--accelerator", default="auto", help="cpu, cuda or auto")
    p.add_argument("--md", type=Path, default=None, help="also write the table to this Markdown file")
    p.add_argument("--plot", type=Path, default=None, help="validation curves to this PNG (default: work dir)")
    args = p.parse_args(argv)
    for key, value in (MICROLLAMA if args.microllama else CPU).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.arms = [tuple(a.split("+")) for a in args.arms.split(",")]
    if any(a not in ARMS for a in args.arms) or ("adamw", "cosine") not in args.arms:
        p.error(f"--arms: each of {', '.join(f'{o}+{s}' for o, s in ARMS)}; adamw+cosine (the target) included")
    return args


def tokenize_sample(dest: Path) -> Path:
    for split in ("train", "validation"):
        if not (dest / split).is_dir():
            subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_slimpajama.py"), "--source_path",
                            str(ROOT / "data" / "sample_slimpajama"), "--split", split, "--tokenizer_dir",
                            str(ROOT / "data" / "tokenizer"), "--destination", str(dest / split), "--chunk_size",
                            "65536", "--num_workers", "2"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return dest


def train(args: argparse.Namespace, data: Path, out: Path, optimizer: str, schedule: str, seed: int) -> Path:
    """One run of the trainer (pretrain/debug.py's command line, every value given here); returns its metrics.csv."""
    if not (out / METRICS_CSV).is_file() or not any((out / "checkpoints").glob("step-*")):
        argv = ["--model_name", args.model, "--block_size", str(args.block_size), "--train_data_dir",
                str(data / "train"), "--val_data_dir", str(data / "validation"), "--tokenizer_dir", "null",
                "--out_dir", str(out), "--global_batch_size", str(args.batch), "--micro_batch_size",
                str(args.micro_batch), "--max_steps", str(args.steps), "--learning_rate", str(args.lr), "--min_lr",
                str(args.lr / 10), "--warmup_steps", str(args.warmup), "--eval_interval", str(args.eval_interval),
                "--eval_iters", str(args.eval_iters), "--save_interval", str(args.steps), "--keep_last_k", "1",
                "--log_interval", str(args.eval_interval), "--loggers", "[]", "--seed", str(seed),
                "--optimizer", optimizer, "--lr_schedule", schedule, "--accelerator", args.accelerator,
                "--devices", "1"]
        subprocess.run([sys.executable, str(ROOT / "pretrain" / "debug.py"), *argv], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    return out / METRICS_CSV


def val_curve(csv: Path) -> list[tuple[float, float]]:
    return [(r["tokens"], r["val_loss"]) for r in read_metrics(csv) if r["val_loss"] is not None]


def tokens_to(curve: list[tuple[float, float]], target: float) -> Optional[float]:
    """Tokens at which the validation loss first reaches `target`, linearly interpolated between evaluations."""
    previous = (0.0, float("inf"))
    for tokens, loss in curve:
        if loss <= target:
            (t0, l0) = previous
            if l0 == float("inf"):
                return tokens
            return t0 + (tokens - t0) * (l0 - target) / (l0 - loss)
        previous = (tokens, loss)
    return None


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    return fmt.format(mean) + (f" ({fmt.format(min(values))}-{fmt.format(max(values))})" if len(values) > 1 else "")


def table(curves: dict[tuple[str, str], list[list[tuple[float, float]]]], target: float) -> str:
    base = [t for c in curves[("adamw", "cosine")] if (t := tokens_to(c, target)) is not None]
    base_mean = statistics.mean(base) if base else None
    lines = [f"target: adamw+cosine's final validation loss, {target:.4f} (mean of its seeds)", "",
             "| arm | seeds reaching target | tokens to target, mean (min-max) | x adamw+cosine | final val loss, "
             "mean (min-max) |", "|---|---|---|---|---|"]
    for arm, runs in curves.items():
        reached = [t for c in runs if (t := tokens_to(c, target)) is not None]
        ratio = spread([t / base_mean for t in reached], "{:.2f}") if base_mean and reached else "-"
        lines.append(f"| {arm[0]}+{arm[1]} | {len(reached)}/{len(runs)} | {spread(reached, '{:,.0f}')} | {ratio} | "
                     f"{spread([c[-1][1] for c in runs], '{:.4f}')} |")
    return "\n".join(lines)


def plot(curves: dict, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (arm, runs), color in zip(curves.items(), ["C0", "C1", "C2", "C3"]):
        for i, curve in enumerate(runs):
            ax.plot([t for t, _ in curve], [v for _, v in curve], color=color, alpha=0.8,
                    label=f"{arm[0]}+{arm[1]}" if i == 0 else None)
    ax.axhline(target, color="gray", linestyle="--", label="target")
    ax.set(xlabel="training tokens", ylabel="validation loss", title="tokens to quality")
    ax.set_ylim(top=target + 1.0)  # the first evaluations are far above: show where the arms differ
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tokens_to_loss-"))
    data = args.data or tokenize_sample(work / "data")
    curves = {}
    for optimizer, schedule in args.arms:
        curves[(optimizer, schedule)] = []
        for seed in range(args.seeds):
            out = work / f"{optimizer}-{schedule}-seed{seed}"
            curve = val_curve(train(args, data, out, optimizer, schedule, seed))
            curves[(optimizer, schedule)].append(curve)
            print(f"{optimizer}+{schedule} seed {seed}: final val loss {curve[-1][1]:.4f}", flush=True)
    target = statistics.mean(c[-1][1] for c in curves[("adamw", "cosine")])
    text = (f"{args.model}, block {args.block_size}, global batch {args.batch}, {args.steps} steps "
            f"({args.steps * args.batch * args.block_size:,} tokens), lr {args.lr:g} (min {args.lr / 10:g}), warm-up "
            f"{args.warmup}, wsd decay over the last 20%, validation every {args.eval_interval} steps "
            f"({args.eval_iters} batches), {args.seeds} seeds\n\n" + table(curves, target))
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    plot(curves, target, args.plot or work / "tokens_to_loss.png")
    print(f"plot: {args.plot or work / 'tokens_to_loss.png'}")


if __name__ == "__main__":
    main()
