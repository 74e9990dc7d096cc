"""The "debug" recipe (4 layers, 128 wide, vocab 4096): minutes on 2 CPU cores, used by `make demo` and the tests.

    fabric run --accelerator cpu --devices 2 pretrain/debug.py --config configs/debug.yaml
"""

from pathlib import Path

from lit_gpt.training import TrainArgs, cli

DEFAULTS = TrainArgs(
    model_name="debug",
    train_data_dir=Path("out/demo/data/train"),
    val_data_dir=Path("out/demo/data/validation"),
    tokenizer_dir=Path("data/tokenizer"),
    out_dir=Path("out/demo/train"),
    block_size=128,
    global_batch_size=16,
    micro_batch_size=8,
    max_steps=500,
    learning_rate=3e-3,
    min_lr=3e-4,
    warmup_steps=20,
    eval_interval=100,
    eval_iters=8,
    save_interval=250,
    keep_last_k=2,
)

if __name__ == "__main__":
    cli(DEFAULTS, description="Pretrain the tiny 'debug' model (CPU-sized) under Lightning Fabric.")
