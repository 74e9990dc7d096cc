"""Starting a run: the command line of every recipe (`cli`), then Fabric with the chosen strategy, which starts
the processes (or joins those `fabric run` / torchrun started); each process runs the loop."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from functools import partial
from typing import Any, Optional, Union

import torch

from lit_gpt.config import Config, padded_vocab_size
from lit_gpt.training.args import TrainArgs, parse_args
from lit_gpt.training.lm_eval_hook import check_lm_eval_args
from lit_gpt.training.loop import Trainer
from lit_gpt.training.metrics import check_loggers
from lit_gpt.training.parallel import fabric_strategy
from lit_gpt.training.processes import LAUNCHER_ENV, first_to_report, started_by_launcher
from lit_gpt.utils import TrainError, exit_with_parent


def cli(defaults: TrainArgs, argv: Optional[list[str]] = None, description: Optional[str] = None) -> None:
    """Parses the command line over `defaults` (a recipe) and trains. Expected problems exit with one line, printed
    once per run (not once per rank)."""
    if started_by_launcher():
        exit_with_parent(os.getppid())  # a killed launcher must not leave its ranks training on, orphaned
    try:
        launch(parse_args(defaults, argv, description))
    except TrainError as e:
        message = f"error: {e}"
        sys.exit(message if first_to_report(message) else 1)


def launch(args: TrainArgs) -> None:
    """Checks the arguments, builds the Fabric for the strategy and starts the processes; each runs `_train_on_rank`."""
    import lightning as L

    args = _apply_launcher_env(_apply_fabric_run_env(args))
    check_loggers(args.loggers)
    _check_accelerator_env()
    config = _model_config(args)
    block_size = args.block_size or config.block_size
    if block_size > config.block_size:
        raise TrainError(f"block_size {block_size} exceeds the model's context length {config.block_size}")
    accelerator = args.accelerator
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    n_local = _num_devices(args.devices, accelerator)
    world_size = n_local * args.num_nodes
    if args.global_batch_size % (args.micro_batch_size * world_size):
        raise TrainError(
            f"global_batch_size {args.global_batch_size} is not divisible by micro_batch_size {args.micro_batch_size}"
            f" x {world_size} devices: pick a global batch that is a multiple of {args.micro_batch_size * world_size}"
        )
    check_lm_eval_args(args)  # last: indexing lm-eval's tasks takes seconds
    precision = args.precision or ("bf16-mixed" if accelerator == "cuda" else "32-true")
    strategy_name = args.strategy
    if strategy_name == "auto":
        strategy_name = "fsdp" if world_size > 1 else "single"
    strategy = fabric_strategy(strategy_name, world_size, precision, _shard_size(args, strategy_name, n_local),
                               args.reshard_after_forward)

    fabric = L.Fabric(accelerator=accelerator, devices=n_local, num_nodes=args.num_nodes, strategy=strategy,
                      precision=precision)
    fabric.launch(partial(_train_on_rank, args=args, config=config, block_size=block_size, strategy_name=strategy_name,
                          precision=precision))


def _train_on_rank(fabric, args: TrainArgs, config: Config, block_size: int, strategy_name: str,
                   precision: str) -> None:
    try:
        Trainer(fabric, args, config, block_size, strategy_name, precision).run()
    except torch.OutOfMemoryError:
        raise TrainError(
            f"out of memory on {fabric.device} with micro_batch_size {args.micro_batch_size} x block_size "
            f"{block_size}: lower --micro_batch_size or pass --activation_checkpointing true") from None


def _check_accelerator_env() -> None:
    """LIT_GPT_ATTENTION / LIT_GPT_SWIGLU naming an unknown backend or one whose package is missing: one line now,
    before any process starts (a backend installed but broken falls back at start-up, saying so)."""
    attention, swiglu = os.environ.get("LIT_GPT_ATTENTION", "auto"), os.environ.get("LIT_GPT_SWIGLU", "triton")
    if (attention, swiglu) == ("auto", "triton"):
        return  # the defaults: nothing to import
    from lit_gpt.kernels.attention import check_backend
    from lit_gpt.kernels.swiglu import check_swiglu_backend

    try:
        check_backend(attention)
        check_swiglu_backend(swiglu)
    except ValueError as e:
        raise TrainError(str(e)) from None


def _shard_size(args: TrainArgs, strategy_name: str, n_local: int) -> Optional[int]:
    """Processes per FSDP shard group: None (all of them) unless --fsdp_mode hybrid, where it defaults to a node."""
    if args.fsdp_mode == "full":
        if args.shard_size is not None:
            raise TrainError(f"shard_size {args.shard_size} needs --fsdp_mode hybrid (full shards over every process)")
        return None
    if strategy_name != "fsdp":
        raise TrainError(f"fsdp_mode hybrid needs --strategy fsdp (this run uses {strategy_name})")
    return args.shard_size or n_local


def _apply_fabric_run_env(args: TrainArgs) -> TrainArgs:
    """Under `fabric run` the launcher's flags (LT_* variables) win over the script's. `fabric run script.py
    --devices 4` (flags after the script) starts a single process: then hand the launch back to Fabric, which starts
    the 4 processes itself."""
    if os.environ.get("LT_CLI_USED") != "1":
        return args
    env = {k: os.environ.pop(f"LT_{k.upper()}", None) for k in ("accelerator", "strategy", "devices", "num_nodes",
                                                                "precision")}
    os.environ.pop("LT_CLI_USED")
    single = os.environ.get("WORLD_SIZE", "1") == "1"
    if single and env["devices"] == "1" and str(args.devices) not in ("1", "auto"):
        for k in [k for k in os.environ if k.startswith("TORCHELASTIC_")] + list(LAUNCHER_ENV):
            os.environ.pop(k, None)
        env["devices"] = None
        if env["num_nodes"] == "1":
            env["num_nodes"] = None
    updates: dict[str, Any] = {}
    if env["accelerator"]:
        updates["accelerator"] = env["accelerator"]
    if env["strategy"] in ("fsdp", "ddp"):
        updates["strategy"] = env["strategy"]
    if env["devices"]:
        updates["devices"] = env["devices"]
    if env["num_nodes"]:
        updates["num_nodes"] = int(env["num_nodes"])
    if env["precision"]:
        updates["precision"] = env["precision"]
    return replace(args, **updates)


def _apply_launcher_env(args: TrainArgs) -> TrainArgs:
    """Under torchrun or srun the launcher has started every process: its counts win over --devices/--num_nodes, so a
    recipe runs unchanged under each (without this, `--devices auto` on CPUs would make each rank a run of its own)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if "TORCHELASTIC_RUN_ID" in os.environ:
        per_node, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
    elif SLURMEnvironment.detect():
        world = int(os.environ["SLURM_NTASKS"])
        per_node = world // int(os.environ.get("SLURM_NNODES", "1"))
    else:
        return args
    return replace(args, devices=per_node, num_nodes=world // per_node)


def _num_devices(devices: Union[int, str], accelerator: str) -> int:
    if str(devices) == "auto":
        return max(1, torch.cuda.device_count()) if accelerator == "cuda" else 1
    try:
        return int(devices)
    except ValueError:  # a list of device ids like "0,1"
        return len([d for d in str(devices).strip("[]").split(",") if d.strip()])


def _model_config(args: TrainArgs) -> Config:
    """The model's shape; one line when the run's tokenizer has more pieces than the model has embedding rows."""
    from lit_gpt.tokenizer import Tokenizer

    try:
        config = Config.from_file(args.model_config) if args.model_config else Config.from_name(args.model_name)
        tokenizer = Tokenizer(args.tokenizer_dir) if args.tokenizer_dir else None
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(str(e)) from None
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise TrainError(f"{tokenizer.path}: {tokenizer.vocab_size:,} pieces, more than the model's vocab_size "
                         f"{config.vocab_size:,}; give a --model_config with vocab_size "
                         f"{padded_vocab_size(tokenizer.vocab_size):,} (scripts/train_tokenizer.py --model_name "
                         "writes one)")
    return config
