"""The options of a training run: `TrainArgs` (every field is a command-line flag and a YAML key of configs/*.yaml)
and their command-line parser. A recipe (pretrain/*.py) is a `TrainArgs` of defaults handed to `launch.cli`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Optional, Union

from lit_gpt.evaluate import DEFAULT_TASKS
from lit_gpt.utils import TrainError


@dataclass
class TrainArgs:
    """Pretraining options (every field is a command-line flag and a YAML key)."""

    # ---- model ----
    model_name: str = "MicroLlama-300M"
    """Named model shape from lit_gpt.config (MicroLlama-300M, TinyLlama-1.1B, TinyLlama-120M, debug, tiny, ...)."""
    model_config: Optional[Path] = None
    """A model_config.json overriding model_name (a custom shape)."""
    block_size: Optional[int] = None
    """Training sequence length in tokens (default: the model's block_size)."""
    init_checkpoint: Optional[Path] = None
    """Start from these weights (lit checkpoint, training step folder or Hugging Face Llama folder) for continued
    pretraining; optimizer and data start fresh."""
    kernels: bool = False
    """Use the fused Triton kernels of lit_gpt.kernels (CUDA only)."""
    compile: bool = False
    """torch.compile each transformer Block."""
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode with --compile: max-autotune-no-cudagraphs also tries Triton GEMMs with the elementwise
    work fused into them (minutes more compile time, paid once per run; measure with benchmarks/train_throughput.py
    --compile-mode before a long run). Modes with CUDA graphs are not offered: they do not mix with FSDP."""
    activation_checkpointing: bool = False
    """Recompute each Block's activations in the backward pass (less memory, ~30% more compute)."""

    # ---- data ----
    train_data_dir: Path = Path("data/slimpajama/train")
    """Folder of packed training chunks (scripts/prepare_slimpajama.py --split train)."""
    train_prefixes: list[str] = field(default_factory=lambda: ["train_slimpajama"])
    """Chunk file prefixes in train_data_dir to mix (files are <prefix>_*.bin)."""
    train_weights: Optional[list[float]] = None
    """Sampling weight of each prefix in train_prefixes (default: equal)."""
    val_data_dir: Optional[Path] = None
    """Folder of packed validation chunks; None disables validation."""
    val_prefix: str = "validation_slimpajama"
    """Chunk file prefix in val_data_dir."""
    tokenizer_dir: Optional[Path] = None
    """Tokenizer folder copied into out_dir so checkpoints are self-contained."""
    num_workers: int = 0
    """Data loader worker processes per training process."""

    # ---- batch and length ----
    global_batch_size: int = 48
    """Sequences per optimizer step across all devices of all nodes."""
    micro_batch_size: int = 12
    """Sequences per device per forward pass (lower it when out of memory)."""
    max_tokens: Optional[int] = None
    """Stop after this many training tokens (rounded up to whole steps)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (the smaller of max_tokens and max_steps wins)."""

    # ---- optimizer and schedule ----
    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw: AdamW for every parameter. muon: Muon for the Blocks' matrices (qkv, proj, gate_up, down), AdamW for
    the embedding, lm_head and norms (docs/training.md, "Optimizers and schedules")."""
    learning_rate: float = 4e-4
    """Peak learning rate (AdamW)."""
    min_lr: float = 4e-5
    """Learning rate at the end of the decay."""
    warmup_steps: int = 2000
    """Linear warm-up steps before the constant phase (wsd) or the cosine decay."""
    lr_schedule: Literal["cosine", "wsd"] = "cosine"
    """cosine: warm-up, then cosine down to min_lr at the last step. wsd (warmup-stable-decay): warm-up, constant,
    then a decay to min_lr over the last decay_fraction of the steps (or from decay_start_step)."""
    decay_fraction: float = 0.2
    """wsd: the share of max_steps spent decaying (the decay starts at max_steps x (1 - decay_fraction))."""
    decay_start_step: Optional[int] = None
    """wsd: the step the decay starts at (overrides decay_fraction): resume a stable-phase checkpoint with it and a
    --max_steps to finish a model from that checkpoint."""
    decay_shape: Literal["1-sqrt", "linear"] = "1-sqrt"
    """wsd: the decay's shape from learning_rate to min_lr: 1 - sqrt(progress), or 1 - progress."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    decay_norms_and_embeddings: bool = False
    """Also apply weight decay to norm weights and the embedding (off: only to the other matrices)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    muon_lr: Optional[float] = None
    """--optimizer muon: peak learning rate of the Muon matrices (default: learning_rate, which carries over with
    muon_adjust_lr 'match_rms_adamw'); follows the same schedule."""
    muon_weight_decay: Optional[float] = None
    """--optimizer muon: decoupled weight decay of the Muon matrices (default: weight_decay)."""
    muon_momentum: float = 0.95
    """--optimizer muon: Muon's (Nesterov) momentum."""
    muon_adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw"
    """--optimizer muon: torch.optim.Muon's adjust_lr_fn. match_rms_adamw scales each update to AdamW's typical RMS
    (0.2 x sqrt(max(rows, cols))), so AdamW's learning rate and weight decay carry over; original: Muon's own
    sqrt(max(1, rows / cols)), which needs its own, larger muon_lr (Muon's published default is 0.02)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""

    # ---- hardware ----
    accelerator: str = "auto"
    """cpu, cuda or auto."""
    devices: Union[int, str] = "auto"
    """Devices (processes) per node."""
    num_nodes: int = 1
    """Number of machines (each runs devices processes)."""
    strategy: Literal["auto", "fsdp", "ddp", "single"] = "auto"
    """auto: fsdp with several devices, else single."""
    fsdp_mode: Literal["full", "hybrid"] = "full"
    """fsdp: full shards every parameter over all processes; hybrid (HSDP) shards within a group of shard_size
    processes (a node) and replicates across groups, so only gradients cross the slower links between nodes."""
    shard_size: Optional[int] = None
    """With fsdp_mode hybrid: processes per shard group (default: devices per node)."""
    reshard_after_forward: bool = True
    """fsdp: free the gathered parameters after each Block's forward and gather them again for its backward (less
    memory); false keeps them until the backward (ZeRO-2 style: a third less parameter traffic, more memory)."""
    precision: Optional[str] = None
    """Fabric precision (default: bf16-mixed on GPU, 32-true on CPU)."""
    seed: int = 42
    """Random seed (model init and data order)."""

    # ---- output, logging, checkpoints ----
    out_dir: Path = Path("out/microllama")
    """Where checkpoints, logs and the model config go."""
    resume: Optional[str] = None
    """'auto' (newest checkpoint in out_dir, if any) or a step folder / state file to continue from."""
    requeue_on_timeout: Optional[bool] = None
    """On SIGUSR1 (SLURM's warning before the time limit, `#SBATCH --signal=USR1@120`): save, then put the job back
    in the queue with `scontrol requeue $SLURM_JOB_ID` (it must be submitted with --requeue and resume with --resume
    auto). None: do so when running as a SLURM job."""
    log_interval: int = 10
    """Print and log metrics every this many optimizer steps."""
    eval_interval: int = 1000
    """Validate every this many steps (and at the end)."""
    eval_iters: int = 100
    """Validation batches (per device) per evaluation."""
    save_interval: int = 1000
    """Checkpoint every this many steps (and at the end)."""
    keep_last_k: Optional[int] = 3
    """Keep only the newest k checkpoints (None keeps all)."""
    async_save: bool = True
    """Write periodic checkpoints in a background thread: training waits only while the state is copied to CPU
    memory (which needs room for one copy of each process's part). The last save and a stop's are written at once."""
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Loggers besides the CSV file (always written): tensorboard, wandb."""
    wandb_project: str = "lit_gpt"
    """W&B project when 'wandb' is in loggers."""
    peak_tflops: Optional[float] = None
    """Per-device peak TFLOP/s for MFU (default: the bf16 table in lit_gpt/training/speed_monitor.py; unknown on CPU)."""

    # ---- lm-eval on intermediate checkpoints (off by default) ----
    lm_eval_interval: Optional[int] = None
    """Score the checkpoint of every this many steps with lm-eval (a multiple of save_interval; None: off)."""
    lm_eval_tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    """lm-eval task names (default: the seed tables' 7 tasks)."""
    lm_eval_limit: Optional[float] = None
    """Examples per task (>= 1) or a fraction of each task (< 1); None: all (slow for big tasks)."""
    lm_eval_num_fewshot: Optional[int] = None
    """Few-shot examples (default: each task's own, 0 for the seed tasks)."""
    lm_eval_batch_size: Union[int, str] = 1
    """lm-eval batch size, or 'auto'."""
    lm_eval_include_path: Optional[Path] = None
    """Folder of extra lm-eval task YAMLs (local or offline tasks, e.g. tests/tasks)."""


def parse_args(defaults: TrainArgs, argv: Optional[list[str]] = None, description: Optional[str] = None) -> TrainArgs:
    from jsonargparse import ActionConfigFile, ArgumentParser

    try:
        from jsonargparse import set_parsing_settings

        set_parsing_settings(docstring_parse_attribute_docstrings=True)
    except ImportError:  # jsonargparse < 4.35
        from jsonargparse import set_docstring_parse_options

        set_docstring_parse_options(attribute_docstrings=True)
    # exact option names only (--learning_rat must not set learning_rate); errors raised, to be printed as one line
    parser = ArgumentParser(description=description or "Pretrain a lit_gpt model under Lightning Fabric.",
                            allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of options (e.g. configs/microllama.yaml)")
    parser.add_class_arguments(TrainArgs, None, default=defaults)
    try:
        ns = parser.parse_args(argv)
    except argparse.ArgumentError as e:
        message = " ".join(line.strip() for line in str(e).splitlines())
        configs = [v for flag, v in zip(argv or sys.argv[1:], (argv or sys.argv[1:])[1:]) if flag == "--config"]
        if configs and "Option '" in message:  # an unknown key: name the YAML file(s) it may come from
            message = f"{', '.join(configs)}: {message}"
        raise TrainError(f"{message} (see --help)") from None
    return TrainArgs(**{f.name: getattr(ns, f.name) for f in fields(TrainArgs)})
