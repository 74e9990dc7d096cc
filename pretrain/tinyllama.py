"""Pretrain TinyLlama-1.1B (22 layers, 2048 wide, GQA 32/4) on SlimPajama: the recipe's defaults, then the shared loop.

    fabric run --devices 8 pretrain/tinyllama.py --config configs/tinyllama.yaml
    python pretrain/tinyllama.py --help
"""

from pathlib import Path

from lit_gpt.training import TrainArgs, cli

# TinyLlama: 1024 sequences of 2048 tokens (~2M tokens) per step on 16 GPUs under FSDP, 3T tokens, seed 3407.
# Optimizer and schedule: TrainArgs' defaults, the shared TinyLlama/MicroLlama recipe (AdamW lr 4e-4, betas
# (0.9, 0.95), weight decay 0.1, grad clip 1.0, 2000 warmup steps, cosine to 4e-5); only what differs is stated.
DEFAULTS = TrainArgs(
    model_name="TinyLlama-1.1B",
    val_data_dir=Path("data/slimpajama/validation"),
    out_dir=Path("out/tinyllama"),
    global_batch_size=1024,
    micro_batch_size=8,
    max_tokens=3_000_000_000_000,
    strategy="fsdp",
    seed=3407,
    eval_interval=2000,
    save_interval=2000,
)

if __name__ == "__main__":
    cli(DEFAULTS, description="Pretrain TinyLlama-1.1B under Lightning Fabric.")
