"""The pretraining loop shared by every recipe in pretrain/: Lightning Fabric, FSDP2 / DDP / one device, exact resume.

A recipe is a `TrainArgs` of defaults handed to `cli(defaults)`; every field is a command-line flag and a key of the
YAML files in configs/ (`--config configs/microllama.yaml`). One optimizer step consumes `global_batch_size`
sequences of `block_size` tokens across *all* processes of all nodes: `micro_batch_size` per process per forward,
with `global_batch_size / (micro_batch_size x world_size)` accumulation steps (gradients synced on the last only).

Checkpoints: `out_dir/checkpoints/step-XXXXXXXX/` holding `state.pth` (one device, DDP) or `state/` (FSDP: a sharded
torch.distributed.checkpoint folder) with the model under "model", the optimizer, step, tokens_seen, each rank's data
loader position and RNG state; written to `step-XXXXXXXX.tmp` and renamed once complete, so a crash mid-save leaves
the previous checkpoint intact. `--resume auto` continues from the newest complete one.

lm-eval during training (`--lm_eval_interval N`, a multiple of save_interval): right after the checkpoint of every
N-th step is saved, rank 0 scores it with `lit_gpt.evaluate.evaluate_checkpoint` in a child process while the other
ranks wait at a barrier; the results go to the metrics (`lm_eval/<task>`) and `eval_results.json` in that step folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import torch.nn as nn

from lit_gpt.config import Config
from lit_gpt.evaluate import DEFAULT_TASKS
from lit_gpt.launch import die_with_parent, first_to_report, lock_folder, started_by_launcher
from lit_gpt.model import GPT
from lit_gpt.speed_monitor import ThroughputMonitor, peak_flops
from lit_gpt.utils import MetricsLogger, TrainError, check_loggers, first_line, format_duration, replace_folder

CHECKPOINTS = "checkpoints"
_STEP_PREFIX = "step-"


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
    learning_rate: float = 4e-4
    """Peak learning rate (AdamW)."""
    min_lr: float = 4e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 2000
    """Linear warm-up steps before the cosine decay."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    decay_norms_and_embeddings: bool = False
    """Also apply weight decay to norm weights and the embedding (off: only to the other matrices)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
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
    precision: Optional[str] = None
    """Fabric precision (default: bf16-mixed on GPU, 32-true on CPU)."""
    seed: int = 42
    """Random seed (model init and data order)."""

    # ---- output, logging, checkpoints ----
    out_dir: Path = Path("out/microllama")
    """Where checkpoints, logs and the model config go."""
    resume: Optional[str] = None
    """'auto' (newest checkpoint in out_dir, if any) or a step folder / state file to continue from."""
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
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Loggers besides the CSV file (always written): tensorboard, wandb."""
    wandb_project: str = "lit_gpt"
    """W&B project when 'wandb' is in loggers."""
    peak_tflops: Optional[float] = None
    """Per-device peak TFLOP/s for MFU (default: the bf16 table in lit_gpt/speed_monitor.py; unknown on CPU)."""

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


# ==== command line ===================================================================================================
def cli(defaults: TrainArgs, argv: Optional[list[str]] = None, description: Optional[str] = None) -> None:
    """Parses the command line over `defaults` (a recipe) and trains. Expected problems exit with one line, printed
    once per run (not once per rank)."""
    if started_by_launcher():
        die_with_parent()  # a killed launcher must not leave its ranks training on, orphaned
    try:
        train(parse_args(defaults, argv, description))
    except TrainError as e:
        message = f"error: {e}"
        sys.exit(message if first_to_report(message) else 1)


def parse_args(defaults: TrainArgs, argv: Optional[list[str]] = None, description: Optional[str] = None) -> TrainArgs:
    from jsonargparse import ActionConfigFile, ArgumentParser

    try:
        from jsonargparse import set_parsing_settings

        set_parsing_settings(docstring_parse_attribute_docstrings=True)
    except ImportError:  # jsonargparse < 4.35
        from jsonargparse import set_docstring_parse_options

        set_docstring_parse_options(attribute_docstrings=True)
    # exact option names only (--learning_rat must not set learning_rate); errors raised, to be printed as one line
    parser = ArgumentParser(description=description or __doc__.splitlines()[0], allow_abbrev=False,
                            exit_on_error=False)
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


# ==== setup ==========================================================================================================
def train(args: TrainArgs) -> None:
    import lightning as L

    args = _apply_fabric_run_env(args)
    check_loggers(args.loggers)
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
    _check_lm_eval_args(args)  # last: indexing lm-eval's tasks takes seconds
    precision = args.precision or ("bf16-mixed" if accelerator == "cuda" else "32-true")
    strategy_name = args.strategy
    if strategy_name == "auto":
        strategy_name = "fsdp" if world_size > 1 else "single"
    if strategy_name == "fsdp":
        from lightning.fabric.strategies import ModelParallelStrategy

        strategy: Any = ModelParallelStrategy(
            parallelize_fn=partial(parallelize_fsdp, precision=precision),
            data_parallel_size=world_size, tensor_parallel_size=1)
    elif strategy_name == "ddp":
        strategy = "ddp"
    else:
        if world_size > 1:
            raise TrainError(f"strategy 'single' runs one process, but {world_size} devices were requested")
        strategy = "auto"

    fabric = L.Fabric(accelerator=accelerator, devices=n_local, num_nodes=args.num_nodes, strategy=strategy,
                      precision=precision)
    fabric.launch(partial(_run, args=args, config=config, block_size=block_size, strategy_name=strategy_name,
                          precision=precision))


def _run(fabric, args: TrainArgs, config: Config, block_size: int, strategy_name: str, precision: str) -> None:
    try:
        Trainer(fabric, args, config, block_size, strategy_name, precision).fit()
    except torch.OutOfMemoryError:
        raise TrainError(
            f"out of memory on {fabric.device} with micro_batch_size {args.micro_batch_size} x block_size "
            f"{block_size}: lower --micro_batch_size or pass --activation_checkpointing true") from None


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
        for k in [k for k in os.environ if k.startswith("TORCHELASTIC_")] + list(_LAUNCHER_ENV):
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


_LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
                 "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _check_lm_eval_args(args: TrainArgs) -> None:
    """Refuses a periodic lm-eval setup that would only fail hours into the run (no lm-eval, unknown task...)."""
    from lit_gpt.checkpoint import has_tokenizer

    if args.lm_eval_interval is None:
        return
    if args.lm_eval_interval <= 0 or args.lm_eval_interval % args.save_interval:
        raise TrainError(f"lm_eval_interval {args.lm_eval_interval} must be a positive multiple of save_interval "
                         f"{args.save_interval} (lm-eval scores the checkpoint saved at that step)")
    if args.keep_last_k == 0:
        raise TrainError("lm_eval_interval needs keep_last_k >= 1 or null (0 deletes the checkpoint it scores)")
    if args.tokenizer_dir is None and not has_tokenizer(args.out_dir):
        raise TrainError("lm_eval_interval needs --tokenizer_dir (lm-eval tokenizes the tasks' text)")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise TrainError("lm_eval_interval needs lm-eval: pip install -e '.[eval]'") from None
    from lit_gpt.evaluate import check_limit, check_tasks, task_manager

    try:
        check_limit(args.lm_eval_limit)
        include = [args.lm_eval_include_path] if args.lm_eval_include_path else None
        check_tasks(args.lm_eval_tasks, task_manager(include))
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(f"lm_eval: {e}".replace("--limit", "--lm_eval_limit").replace(
            "--include_path", "--lm_eval_include_path")) from None


def _num_devices(devices: Union[int, str], accelerator: str) -> int:
    if str(devices) == "auto":
        return max(1, torch.cuda.device_count()) if accelerator == "cuda" else 1
    try:
        return int(devices)
    except ValueError:  # a list of device ids like "0,1"
        return len([d for d in str(devices).strip("[]").split(",") if d.strip()])


def _model_config(args: TrainArgs) -> Config:
    try:
        if args.model_config is not None:
            return Config.from_file(args.model_config)
        return Config.from_name(args.model_name)
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(str(e)) from None


def parallelize_fsdp(model: nn.Module, device_mesh, precision: str) -> nn.Module:
    """FSDP2: shard each Block, then the root (embedding, final norm, lm_head). bf16 compute, fp32 reductions.
    `device_mesh` has a "data_parallel" dim (Fabric's ModelParallelStrategy makes it; the benchmark makes a 1-D one)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = device_mesh["data_parallel"]
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if "bf16" in precision else None
    kwargs = {"mesh": mesh} if mp is None else {"mesh": mesh, "mp_policy": mp}
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def wrap_blocks(model: GPT, activation_checkpointing: bool, compile: bool, backend: str = "inductor",
                mode: str = "default") -> None:
    """Per-Block activation checkpointing and torch.compile, in place (parameter names stay unchanged). Blocks are
    FSDP2's wrapping unit too; all of them share one compiled graph (compiled once, not once per layer).
    benchmarks/train_throughput.py compiles through here, so its numbers are the trainer's."""
    for block in model.blocks:
        if activation_checkpointing:
            from torch.distributed._composable import checkpoint

            checkpoint(block)
        if compile:
            block.compile(backend=backend, mode=mode)


# ==== the loop =======================================================================================================
class Trainer:
    def __init__(self, fabric, args: TrainArgs, config: Config, block_size: int, strategy_name: str,
                 precision: str) -> None:
        self.fabric, self.args, self.config, self.block_size = fabric, args, config, block_size
        self.strategy_name, self.precision = strategy_name, precision
        self.out_dir = Path(args.out_dir)
        world = fabric.world_size
        self.accum = args.global_batch_size // (args.micro_batch_size * world)
        self.tokens_per_step = args.global_batch_size * block_size
        self.max_steps = _max_steps(args, self.tokens_per_step)
        self.step = 0
        self.tokens_seen = 0
        self.stop_signal: Optional[str] = None
        self._stop_group = self._stop_work = self._stop_flag = None  # see _stop_requested

    # ---- setup ----
    def fit(self) -> None:
        with self._holding_out_dir():
            self._fit()

    @contextlib.contextmanager
    def _holding_out_dir(self):
        """Rank 0 locks out_dir for the whole run, so a second run cannot write there meanwhile; every rank learns
        whether that failed, and all stop with the same line."""
        lock, error = None, None
        if self.fabric.global_rank == 0:
            try:
                lock = lock_folder(self.out_dir)
            except TrainError as e:
                error = str(e)
        error = self.fabric.broadcast(error, src=0)
        if error is not None:
            raise TrainError(error)
        try:
            yield
        finally:
            if lock is not None:
                lock.close()

    def _fit(self) -> None:
        fabric, args = self.fabric, self.args
        fabric.seed_everything(args.seed)
        resume_path = self._resume_path()
        if resume_path is not None:
            self._check_resume_shape(resume_path)

        with fabric.init_module(empty_init=False):
            model = GPT(self.config, kernels=args.kernels)
        if args.init_checkpoint is not None and resume_path is None:
            self._load_init_weights(model)
        wrap_blocks(model, args.activation_checkpointing, args.compile, mode=args.compile_mode)
        self.model = fabric.setup_module(model)
        self.optimizer = fabric.setup_optimizers(_make_optimizer(model, args, fabric.device))

        self.train_loader = self._make_train_loader()
        if resume_path is not None:
            self._load_checkpoint(resume_path)
        if fabric.global_rank == 0:
            self._prepare_out_dir()
        fabric.barrier()
        self.logger = MetricsLogger(self.out_dir, args.loggers, asdict(args), resume_step=self.step,
                                    wandb_project=args.wandb_project) if fabric.global_rank == 0 else None
        peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(fabric.device)
        self.monitor = ThroughputMonitor(self.config.flops_per_token(self.block_size), fabric.world_size, peak)
        fabric.print(
            f"model {self.config.name}: {self.config.num_params() / 1e6:.2f}M parameters | strategy "
            f"{self.strategy_name}, {fabric.world_size} processes ({args.num_nodes} node(s)), precision "
            f"{self.precision} | global batch {args.global_batch_size} = micro "
            f"{args.micro_batch_size} x {fabric.world_size} devices x {self.accum} accumulation | "
            f"{self.tokens_per_step} tokens/step, {self.max_steps} steps")
        if resume_path is not None:
            fabric.print(f"resumed from {resume_path} at step {self.step} ({self.tokens_seen} tokens seen)")
        previous = self._install_signal_handlers()
        try:
            self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _make_train_loader(self):
        args = self.args
        weights = args.train_weights or [1.0] * len(args.train_prefixes)
        if len(weights) != len(args.train_prefixes):
            raise TrainError(f"train_weights has {len(weights)} entries but train_prefixes has "
                             f"{len(args.train_prefixes)}")
        sources = [(args.train_data_dir, p, w) for p, w in zip(args.train_prefixes, weights)]
        return self._loader(sources, shuffle=True, infinite=True)

    def _loader(self, sources, shuffle: bool, infinite: bool):
        from lit_gpt.packed_dataset import make_dataloader

        for data_dir, prefix, _ in sources:
            if not Path(data_dir).is_dir():
                raise TrainError(f"{data_dir}: data folder not found (prepare it with scripts/prepare_slimpajama.py)")
        try:
            return make_dataloader(sources, self.block_size, self.args.micro_batch_size, seed=self.args.seed,
                                   rank=self.fabric.global_rank, world_size=self.fabric.world_size,
                                   num_workers=self.args.num_workers, shuffle=shuffle, infinite=infinite)
        except (FileNotFoundError, ValueError) as e:
            raise TrainError(str(e)) from None

    def _load_init_weights(self, model: GPT) -> None:
        from lit_gpt.checkpoint import check_state_dict, load_model_state

        try:
            state_dict = load_model_state(self.args.init_checkpoint)
            check_state_dict(state_dict, self.config, self.args.init_checkpoint)
        except (FileNotFoundError, ValueError) as e:
            raise TrainError(str(e)) from None
        if self.config.tie_embeddings:
            state_dict["lm_head.weight"] = state_dict["embed.weight"]
        model.load_state_dict(state_dict)
        self.fabric.print(f"initialised weights from {self.args.init_checkpoint}")

    def _prepare_out_dir(self) -> None:
        from lit_gpt.checkpoint import copy_tokenizer_files

        (self.out_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        self.config.save(self.out_dir / "model_config.json")
        copy_tokenizer_files(self.args.tokenizer_dir, self.out_dir)

    # ---- training ----
    def _loop(self) -> None:
        fabric, args = self.fabric, self.args
        train_iter = iter(self.train_loader)
        self.monitor.start(self.step, self.tokens_seen)
        last_saved = self.step if self.args.resume is not None else -1
        while self.step < self.max_steps:
            lr = cosine_lr(self.step, args.learning_rate, args.min_lr, args.warmup_steps, self.max_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=fabric.device)
            for micro in range(self.accum):
                batch = self._check_tokens(next(train_iter)).to(fabric.device, non_blocking=True)
                x, y = batch[:, :-1], batch[:, 1:]
                with fabric.no_backward_sync(self.model, enabled=micro < self.accum - 1):
                    loss = self.model(x, y)
                    fabric.backward(loss / self.accum)
                loss_sum += loss.detach()
            grad_norm = self._clip_gradients()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            self.monitor.update(self.step, self.tokens_seen)

            if self.step % args.log_interval == 0 or self.step in (1, self.max_steps):
                self._log(loss_sum / self.accum, lr, grad_norm)
            paused = time.perf_counter()  # validation and checkpoints don't count against training throughput
            _fault_injection(self.step, fabric.global_rank)
            stop = self._stop_requested()
            validate = self.step % args.eval_interval == 0 or self.step == self.max_steps
            if args.val_data_dir is not None and validate and not stop:  # stopping: the grace period is short
                self._validate()
            if self.step % args.save_interval == 0 or self.step == self.max_steps or stop:
                step_dir = self.save_checkpoint()
                last_saved = self.step
                if args.lm_eval_interval and self.step % args.lm_eval_interval == 0 and not stop:
                    self._lm_eval(step_dir)
            self.monitor.exclude(time.perf_counter() - paused)
            if stop:
                fabric.print(f"stopped by {self.stop_signal or 'a signal on another rank'} at step {self.step}; "
                             f"continue with --resume auto --out_dir {self.out_dir}")
                break
        if self._stop_work is not None:  # the last flag exchange, issued by every rank, completes before teardown
            self._stop_work.wait()
        if last_saved != self.step:
            self.save_checkpoint()
        if self.logger is not None:
            self.logger.close()
        fabric.barrier()

    def _check_tokens(self, batch: torch.Tensor) -> torch.Tensor:
        """Token ids beyond the vocabulary would crash the embedding with an opaque IndexError (or a CUDA assert)."""
        top = int(batch.max())
        if top >= self.config.vocab_size:
            raise TrainError(f"{self.args.train_data_dir}: token id {top} >= the model's vocab_size "
                             f"{self.config.vocab_size}: the data was tokenized for another model")
        return batch

    def _clip_gradients(self) -> Optional[torch.Tensor]:
        if not self.args.grad_clip:
            return None
        norm = self.fabric.clip_gradients(self.model, self.optimizer, max_norm=self.args.grad_clip)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def _log(self, loss: torch.Tensor, lr: float, grad_norm: Optional[torch.Tensor]) -> None:
        fabric = self.fabric
        loss = fabric.all_reduce(loss, reduce_op="mean")
        speed = self.monitor.compute(self.max_steps)
        peak_mem = (torch.cuda.max_memory_allocated(fabric.device) / 2**30) if fabric.device.type == "cuda" else None
        metrics = {"step": self.step, "tokens": self.tokens_seen, "loss": loss.item(), "lr": lr,
                   "grad_norm": None if grad_norm is None else grad_norm.item(), **speed, "peak_mem_gib": peak_mem}
        if self.logger is not None:
            self.logger.log(metrics)
        tps = speed["tokens_per_s"]
        fabric.print(
            f"step {self.step}/{self.max_steps} | loss {metrics['loss']:.4f} | lr {lr:.2e}"
            + (f" | grad norm {metrics['grad_norm']:.3f}" if grad_norm is not None else "")
            + (f" | {tps:,.0f} tok/s ({speed['tokens_per_s_per_device']:,.0f}/device)" if tps else "")
            + (f" | MFU {speed['mfu']:.1%}" if speed["mfu"] is not None else "")
            + (f" | peak mem {peak_mem:.1f} GiB" if peak_mem is not None else "")
            + (f" | ETA {format_duration(speed['eta_s'])}" if speed["eta_s"] is not None else ""))

    @torch.no_grad()
    def _validate(self) -> None:
        """Mean loss over up to eval_iters batches per device of the validation chunks, read from their start. Every
        rank runs the same number of forwards (FSDP needs all ranks in each all-gather): stop when any rank runs out."""
        fabric, args = self.fabric, self.args
        loader = self._loader([(args.val_data_dir, args.val_prefix, 1.0)], shuffle=False, infinite=False)
        self.model.eval()
        total, count = torch.zeros((), device=fabric.device), 0
        it = iter(loader)
        for _ in range(args.eval_iters):
            batch = next(it, None)
            have = fabric.all_reduce(torch.tensor(float(batch is not None), device=fabric.device), reduce_op="min")
            if have.item() == 0:
                break
            total += self.model(batch[:, :-1].to(fabric.device), batch[:, 1:].to(fabric.device))
            count += 1
        self.model.train()
        if count == 0:
            raise TrainError(f"{args.val_data_dir}: not enough validation tokens for one batch of "
                             f"{args.micro_batch_size} x {self.block_size + 1} per device")
        val_loss = fabric.all_reduce(total / count, reduce_op="mean").item()
        if self.logger is not None:
            self.logger.log({"step": self.step, "tokens": self.tokens_seen, "val_loss": val_loss,
                             "val_ppl": math.exp(min(val_loss, 50))})
        fabric.print(f"step {self.step} | validation loss {val_loss:.4f} (ppl {math.exp(min(val_loss, 50)):.1f}, "
                     f"{count} batches/device)")

    def _lm_eval(self, step_dir: Path) -> None:
        """Rank 0 scores the checkpoint just saved with lm-eval in a child process, the other ranks wait. A child,
        not a call in this process: lm-eval seeds random/numpy/torch and its `hf` model starts its own distributed
        setup from the launcher's environment, and reading a sharded checkpoint here would issue collectives the
        other ranks never join. A failed evaluation is reported and training goes on."""
        fabric = self.fabric
        if fabric.global_rank == 0:
            t0 = time.perf_counter()
            report, error = run_lm_eval_child(step_dir, self.args, fabric.device)
            took = format_duration(time.perf_counter() - t0)
            if error is not None:
                fabric.print(f"step {self.step} | lm-eval failed after {took}, training goes on: {error}")
            else:
                values = {f"lm_eval/{task}": s["value"] for task, s in report["summary"].items()}
                if report["average"] is not None:
                    values["lm_eval/avg"] = report["average"]
                if self.logger is not None:
                    self.logger.log({"step": self.step, "tokens": self.tokens_seen, **values})
                scores = ", ".join(f"{task} {s['metric']} {100 * s['value']:.2f}"
                                   for task, s in report["summary"].items())
                fabric.print(f"step {self.step} | lm-eval {scores} ({took}) -> {report['output']}")
        fabric.barrier()

    # ---- signals ----
    def _install_signal_handlers(self) -> dict:
        def handler(signum, frame):  # only set a flag: the loop acts on it at the step boundary, on every rank
            self.stop_signal = signal.Signals(signum).name

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _stop_requested(self) -> bool:
        """True on every rank, after the same step, when any rank got SIGTERM/SIGINT: at most one step after the
        signal's own step, whatever log_interval is, so the checkpoint is written inside a launcher's grace period.
        Each step's flag is all-reduced on a CPU (gloo) group without waiting; the next step waits for it, long done
        by then: no device tensor, no GPU sync, no stall on the other ranks."""
        import torch.distributed as dist

        if self.fabric.world_size == 1:
            return self.stop_signal is not None
        if self._stop_group is None:
            self._stop_group = dist.new_group(backend="gloo")
        stop = False
        if self._stop_work is not None:
            self._stop_work.wait()
            stop = bool(self._stop_flag.item() > 0)
        self._stop_flag = torch.tensor([float(self.stop_signal is not None)])
        self._stop_work = dist.all_reduce(self._stop_flag, op=dist.ReduceOp.MAX, group=self._stop_group,
                                          async_op=True)
        return stop

    # ---- checkpoints ----
    @property
    def sharded(self) -> bool:
        return self.strategy_name == "fsdp"

    def _state(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "step": self.step, "tokens_seen": self.tokens_seen,
                "train_dataloader": self._gather(self.train_loader.state_dict()), "rng": self._gather(_rng_state()),
                "world_size": self.fabric.world_size, "model_config": self.config.to_dict(),
                "train_args": {k: str(v) for k, v in asdict(self.args).items()}}

    def _gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (rank 0 writes them all into the checkpoint metadata)."""
        if self.fabric.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.fabric.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def save_checkpoint(self) -> Path:
        fabric = self.fabric
        final = self.out_dir / CHECKPOINTS / f"{_STEP_PREFIX}{self.step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if fabric.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        fabric.barrier()
        state = self._state()
        fabric.save(tmp / ("state" if self.sharded else "state.pth"), state)
        fabric.barrier()
        if fabric.global_rank == 0:
            self.config.save(tmp / "model_config.json")
            replace_folder(tmp, final)  # re-saving a step keeps a complete copy at every moment
            _prune_checkpoints(self.out_dir / CHECKPOINTS, self.args.keep_last_k)
        fabric.barrier()
        fabric.print(f"saved checkpoint {final}")
        return final

    def _resume_path(self) -> Optional[Path]:
        resume = self.args.resume
        if resume is None:
            if latest_checkpoint(self.out_dir) is not None:
                raise TrainError(f"{self.out_dir / CHECKPOINTS}: holds checkpoints of an earlier run; continue it with "
                                 f"--resume auto, or pick a new --out_dir")
            return None
        if resume == "auto":
            latest = latest_checkpoint(self.out_dir)
            if latest is None:
                self.fabric.print(f"--resume auto: no checkpoint in {self.out_dir / CHECKPOINTS}, starting fresh")
            return latest
        path = Path(resume)
        if path.name in ("state.pth", "state"):
            path = path.parent
        if not path.is_dir() or not ((path / "state.pth").is_file() or (path / "state").is_dir()):
            raise TrainError(f"{resume}: resume checkpoint not found (expected a step folder with state.pth or state/)")
        return path

    def _check_resume_shape(self, path: Path) -> None:
        """Refuses a checkpoint written for another model shape or strategy before any loading starts."""
        meta = _read_metadata(path)
        saved = meta.get("model_config")
        if saved is not None and saved != self.config.to_dict():
            diff = [f"{k} {saved.get(k)} -> {v}" for k, v in self.config.to_dict().items() if saved.get(k) != v]
            raise TrainError(f"{path}: checkpoint is for another model shape ({', '.join(diff)}); "
                             f"pass the matching --model_name or a fresh --out_dir")
        if (path / "state").is_dir() != self.sharded:
            kind = "sharded (fsdp)" if (path / "state").is_dir() else "single-file (ddp/single)"
            raise TrainError(f"{path}: checkpoint is {kind} but this run uses strategy {self.strategy_name}; "
                             f"resume with the same strategy")
        if meta.get("world_size", self.fabric.world_size) != self.fabric.world_size:
            raise TrainError(f"{path}: checkpoint was written by {meta['world_size']} processes but this run has "
                             f"{self.fabric.world_size}; resume with the same number of devices x nodes")

    def _load_checkpoint(self, path: Path) -> None:
        state = {"model": self.model, "optimizer": self.optimizer, "step": 0, "tokens_seen": 0,
                 "train_dataloader": None, "rng": None}
        self.fabric.load(path / ("state" if self.sharded else "state.pth"), state, strict=False)
        rank = self.fabric.global_rank
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.train_loader.load_state_dict(state["train_dataloader"][rank])
        _set_rng_state(state["rng"][rank])


# ==== helpers ========================================================================================================
def cosine_lr(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up to `lr`, then cosine down to `min_lr`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def _max_steps(args: TrainArgs, tokens_per_step: int) -> int:
    limits = [s for s in (args.max_steps, args.max_tokens and math.ceil(args.max_tokens / tokens_per_step)) if s]
    if not limits:
        raise TrainError("set --max_steps or --max_tokens")
    return min(limits)


def _make_optimizer(model: nn.Module, args: TrainArgs, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only; norms and the embedding too when decay_norms_and_embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exempt = p.ndim < 2 or name.startswith("embed.")
        (no_decay if exempt and not args.decay_norms_and_embeddings else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.beta1, args.beta2),
                             fused=device.type == "cuda")


def latest_checkpoint(out_dir: Path) -> Optional[Path]:
    """The newest complete step folder in out_dir/checkpoints (unfinished `.tmp` folders are ignored)."""
    return (_step_dirs(Path(out_dir) / CHECKPOINTS) or [None])[-1]


def _step_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    dirs = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(_STEP_PREFIX)
            and p.name[len(_STEP_PREFIX):].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[len(_STEP_PREFIX):]))


def _prune_checkpoints(folder: Path, keep_last_k: Optional[int]) -> None:
    if keep_last_k is None:
        return
    for old in _step_dirs(folder)[:-keep_last_k] if keep_last_k > 0 else _step_dirs(folder):
        shutil.rmtree(old, ignore_errors=True)


def _read_metadata(path: Path) -> dict[str, Any]:
    """The non-tensor entries of a checkpoint (step, model_config, world_size...) without loading the weights."""
    file = path / "state" / "meta.pt" if (path / "state").is_dir() else path / "state.pth"
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=file.name == "state.pth")
    except Exception as e:
        raise TrainError(f"{file}: unreadable checkpoint ({first_line(e)})")
    return {k: v for k, v in obj.items() if k in ("step", "model_config", "world_size")}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def run_lm_eval_child(step_dir: Path, args: TrainArgs, device: torch.device) -> tuple[Optional[dict], Optional[str]]:
    """Runs `evaluate_checkpoint` on `step_dir` in a fresh single-process Python (launcher variables removed), its
    output logged to `step_dir/lm_eval.log`. Returns (report, None) or (None, the one-line error)."""
    from lit_gpt.evaluate import RESULTS_FILE, load_results

    limit = args.lm_eval_limit
    kwargs = {"checkpoint": str(step_dir), "tasks": list(args.lm_eval_tasks), "num_fewshot": args.lm_eval_num_fewshot,
              "limit": int(limit) if limit is not None and limit >= 1 else limit,
              "batch_size": args.lm_eval_batch_size, "device": str(device),
              "include_path": [str(args.lm_eval_include_path)] if args.lm_eval_include_path else None}
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCHER_ENV and not k.startswith(("TORCHELASTIC_", "LT_"))}
    log = step_dir / "lm_eval.log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", "from lit_gpt.trainer import _lm_eval_main; _lm_eval_main()",
                               json.dumps(kwargs)], stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        return None, f"{reason.removeprefix('error: ')} (log: {log})"
    return load_results(step_dir / RESULTS_FILE), None


def _lm_eval_main() -> None:
    """The child process of `run_lm_eval_child`: evaluate_checkpoint(**json argv[1]); errors end in one line."""
    from lit_gpt.evaluate import evaluate_checkpoint

    try:
        evaluate_checkpoint(**json.loads(sys.argv[1]))
    except Exception as e:
        traceback.print_exc()  # into the log, for the unexpected cases; the parent reports the last line
        sys.exit(f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")


def _fault_injection(step: int, rank: int) -> None:
    """Test hooks, right after optimizer step k: LIT_GPT_KILL_AFTER_STEP=k makes every rank SIGKILL itself (a hard
    crash, no chance to clean up); LIT_GPT_SIGTERM_AFTER_STEP=k sends SIGTERM to rank 0 only (a preemption notice
    the other ranks must learn about). Used to prove that resuming reproduces an uninterrupted run."""
    if os.environ.get("LIT_GPT_KILL_AFTER_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("LIT_GPT_SIGTERM_AFTER_STEP") == str(step) and rank == 0:
        os.kill(os.getpid(), signal.SIGTERM)
