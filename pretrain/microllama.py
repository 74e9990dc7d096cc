"""Pretrain MicroLlama-300M (12 layers, 1024 wide, GQA 16/4) on SlimPajama: the recipe's defaults, then the shared loop.

    fabric run --devices 4 pretrain/microllama.py --config configs/microllama.yaml
    python pretrain/microllama.py --devices 4 --micro_batch_size 8        # Fabric launches the 4 processes itself
    python pretrain/microllama.py --help                                  # every option
"""

from pathlib import Path

from lit_gpt.training import TrainArgs, cli

# MicroLlama: 4 GPUs x micro batch 12 = 48 sequences of 2048 tokens per step (~98k tokens), ~50B tokens, seed 42,
# AdamW lr 4e-4, betas (0.9, 0.95), weight decay 0.1, grad clip 1.0, 2000 warmup steps, cosine to 4e-5: TrainArgs'
# defaults are this recipe, so only what differs from them is stated here.
DEFAULTS = TrainArgs(
    val_data_dir=Path("data/slimpajama/validation"),
    max_tokens=50_000_000_000,
)

if __name__ == "__main__":
    cli(DEFAULTS, description="Pretrain MicroLlama-300M under Lightning Fabric.")
