"""Pretraining under Lightning Fabric, one concern per module (imports run downward through this list):

    args.py          TrainArgs (every flag of every recipe) and its command-line parser
    muon.py          Muon for the Blocks' matrices + AdamW for the rest, one optimizer, FSDP2-aware
    optim.py         AdamW (or Muon + AdamW) and the schedules: warm-up + cosine, warmup-stable-decay
    parallel.py      the Fabric strategy, FSDP2 / HSDP sharding, per-Block compile / activation checkpointing
    processes.py     the launcher's variables and counts, the out_dir lock, one error line per run, SLURM requeue
    metrics.py       metrics.csv, TensorBoard, W&B
    speed_monitor.py tokens/s and MFU
    checkpointer.py  saving and restoring the run's state (lit_gpt.layout says where)
    lm_eval_hook.py  lm-eval on intermediate checkpoints, in a child process
    loop.py          Trainer: setup, then the loop readable top to bottom
    launch.py        cli() and launch(): from the command line to the processes running the loop

A recipe (pretrain/*.py) is `cli(TrainArgs(...defaults...))`.
"""

from lit_gpt.training.args import TrainArgs
from lit_gpt.training.launch import cli, launch

__all__ = ["TrainArgs", "cli", "launch"]
