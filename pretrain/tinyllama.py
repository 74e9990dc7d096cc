"""Pretrain TinyLlama-1.1B (22 layers, 2048 wide, GQA 32/4) on SlimPajama: the recipe's defaults, then the shared loop.

    fabric run --devices 8 pretrain/tinyllama.py --config configs/tinyllama.yaml
    python pretrain/tinyllama.py --help
"""

from pathlib import Path

from lit_gpt.trainer import TrainArgs, cli

# TinyLlama: 1024 sequences of 2048 tokens (~2M tokens) per step on 16 GPUs, 3T tokens, seed 3407.
DEFAULTS = TrainArgs(
    model_name="TinyLlama-1.1B",
    train_data_dir=Path("data/slimpajama/train"),
    val_data_dir=Path("data/slimpajama/validation"),
    out_dir=Path("out/tinyllama"),
    global_batch_size=1024,
    micro_batch_size=8,
    max_tokens=3_000_000_000_000,
    learning_rate=4e-4,
    min_lr=4e-5,
    warmup_steps=2000,
    weight_decay=0.1,
    grad_clip=1.0,
    seed=3407,
    log_interval=10,
    eval_interval=2000,
    eval_iters=100,
    save_interval=2000,
    keep_last_k=3,
    activation_checkpointing=False,
)

if __name__ == "__main__":
    cli(DEFAULTS, description="Pretrain TinyLlama-1.1B under Lightning Fabric.")
