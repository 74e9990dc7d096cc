"""Pretrain MicroLlama-300M (12 layers, 1024 wide, GQA 16/4) on SlimPajama: the recipe's defaults, then the shared loop.

    fabric run --devices 4 pretrain/microllama.py --config configs/microllama.yaml
    python pretrain/microllama.py --devices 4 --micro_batch_size 8        # Fabric launches the 4 processes itself
    python pretrain/microllama.py --help                                  # every option
"""

from pathlib import Path

from lit_gpt.training import TrainArgs, cli

# MicroLlama: 4 GPUs x micro batch 12 = 48 sequences of 2048 tokens per step (~98k tokens), ~50B tokens.
# Optimizer and schedule: TrainArgs' defaults, the shared TinyLlama/MicroLlama recipe (AdamW lr 4e-4, betas
# (0.9, 0.95), weight decay 0.1, grad clip 1.0, 2000 warmup steps, cosine to 4e-5).
DEFAULTS = TrainArgs(
    model_name="MicroLlama-300M",
    train_data_dir=Path("data/slimpajama/train"),
    val_data_dir=Path("data/slimpajama/validation"),
    out_dir=Path("out/microllama"),
    global_batch_size=48,
    micro_batch_size=12,
    max_tokens=50_000_000_000,
    seed=42,
    eval_interval=1000,
    save_interval=1000,
)

if __name__ == "__main__":
    cli(DEFAULTS, description="Pretrain MicroLlama-300M under Lightning Fabric.")
