"""The training loop: one optimizer step consumes `global_batch_size` sequences of `block_size` tokens across *all*
processes of all nodes: `micro_batch_size` per process per forward, with `global_batch_size / (micro_batch_size x
world_size)` accumulation steps (gradients synced on the last only). Validation, checkpoints, lm-eval and stop
signals happen between steps."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from lit_gpt import layout
from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.training.args import TrainArgs
from lit_gpt.training.checkpointer import Checkpointer, rng_state, set_rng_state
from lit_gpt.training.lm_eval_hook import evaluate_step
from lit_gpt.training.metrics import MetricsLogger
from lit_gpt.training.optim import check_schedule, make_optimizer, max_steps, set_learning_rates
from lit_gpt.training.parallel import describe_sharding, wrap_blocks
from lit_gpt.training.processes import lock_folder, requeue_problem, requeue_slurm_job, requeue_wanted
from lit_gpt.training.speed_monitor import ThroughputMonitor, peak_flops
from lit_gpt.utils import TrainError, format_duration


class Trainer:
    def __init__(self, fabric, args: TrainArgs, config: Config, block_size: int, strategy_name: str,
                 precision: str) -> None:
        self.fabric, self.args, self.config, self.block_size = fabric, args, config, block_size
        self.strategy_name, self.precision = strategy_name, precision
        self.out_dir = Path(args.out_dir)
        world = fabric.world_size
        self.accum = args.global_batch_size // (args.micro_batch_size * world)
        self.tokens_per_step = args.global_batch_size * block_size
        self.max_steps = max_steps(args, self.tokens_per_step)
        check_schedule(args, self.max_steps)
        self.checkpointer = Checkpointer(fabric, self.out_dir, strategy_name, args.keep_last_k)
        self.step = 0
        self.tokens_seen = 0
        self.stop_signal: Optional[str] = None
        self.time_limit = False  # the stop came from SIGUSR1, SLURM's warning before the time limit (any rank's)
        self._stop_group = self._stop_work = self._stop_flag = None  # see _stop_requested

    # ---- setup ----
    def run(self) -> None:
        """Sets up model, optimizer and data (resuming if asked), then trains until max_steps or a stop signal."""
        with self._holding_out_dir():
            self._setup_and_train()

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

    def _setup_and_train(self) -> None:
        fabric, args = self.fabric, self.args
        fabric.seed_everything(args.seed)
        resume_path = self.checkpointer.resume_path(args.resume)
        if resume_path is not None:
            self.checkpointer.verify(resume_path)
            self.checkpointer.check_compatible(resume_path, self.config, args.optimizer)

        with fabric.init_module(empty_init=False):
            model = GPT(self.config, kernels=args.kernels)
        if args.init_checkpoint is not None and resume_path is None:
            self._load_init_weights(model)
        wrap_blocks(model, args.activation_checkpointing, args.compile, mode=args.compile_mode)
        self.model = fabric.setup_module(model)
        self.optimizer = fabric.setup_optimizers(make_optimizer(model, args, fabric.device))

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
            f"{self.strategy_name}{describe_sharding(self.model, args.reshard_after_forward)}, "
            f"{fabric.world_size} processes ({args.num_nodes} node(s)), precision "
            f"{self.precision} | global batch {args.global_batch_size} = micro "
            f"{args.micro_batch_size} x {fabric.world_size} devices x {self.accum} accumulation | "
            f"{self.tokens_per_step} tokens/step, {self.max_steps} steps")
        fabric.print(describe_accelerators(fabric.device, self.precision, args.kernels))  # decided on every rank
        if resume_path is not None:
            fabric.print(f"resumed from {resume_path} at step {self.step} ({self.tokens_seen} tokens seen)")
        if fabric.global_rank == 0 and requeue_wanted(args.requeue_on_timeout):
            problem = requeue_problem()
            if problem is not None:
                print(f"warning: {problem}: at the time limit this run saves and stops without coming back; submit "
                      f"with `sbatch --requeue` to continue by itself", file=sys.stderr, flush=True)
        previous = self._install_signal_handlers()
        try:
            self._train()
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
        from lit_gpt.data.packed import make_dataloader

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
        from lit_gpt.checkpoint import load_model_state
        from lit_gpt.weights import check_state_dict, load_weights

        try:
            state_dict = load_model_state(self.args.init_checkpoint)
            check_state_dict(state_dict, self.config, self.args.init_checkpoint)
        except (FileNotFoundError, ValueError) as e:
            raise TrainError(str(e)) from None
        load_weights(model, state_dict)
        self.fabric.print(f"initialised weights from {self.args.init_checkpoint}")

    def _prepare_out_dir(self) -> None:
        from lit_gpt.weights import copy_tokenizer_files

        (self.out_dir / layout.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        self.config.save(self.out_dir / layout.MODEL_CONFIG)
        copy_tokenizer_files(self.args.tokenizer_dir, self.out_dir)

    # ---- training ----
    def _train(self) -> None:
        fabric, args = self.fabric, self.args
        train_iter = iter(self.train_loader)
        self.monitor.start(self.step, self.tokens_seen)
        last_saved = self.step if self.args.resume is not None else -1
        while self.step < self.max_steps:
            lr = set_learning_rates(self.optimizer, self.step, args, self.max_steps)
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
            fault_injection(self.step, fabric.global_rank)
            stop = self._stop_requested()
            validate = self.step % args.eval_interval == 0 or self.step == self.max_steps
            if args.val_data_dir is not None and validate and not stop:  # stopping: the grace period is short
                self._validate()
            if self.step % args.save_interval == 0 or self.step == self.max_steps or stop:
                lm_eval = bool(args.lm_eval_interval) and self.step % args.lm_eval_interval == 0 and not stop
                # the last save, and one lm-eval reads at once, are complete before going on
                background = args.async_save and not (stop or lm_eval or self.step == self.max_steps)
                step_dir = self.save_checkpoint(background)
                last_saved = self.step
                if lm_eval:
                    evaluate_step(fabric, args, step_dir, self.step, self.tokens_seen, self.logger)
            self.monitor.exclude(time.perf_counter() - paused)
            if stop:
                fabric.print(f"stopped by {self.stop_signal or 'a signal on another rank'} at step {self.step}; "
                             f"continue with --resume auto --out_dir {self.out_dir}")
                break
        if self._stop_work is not None:  # the last flag exchange, issued by every rank, completes before teardown
            self._stop_work.wait()
        if last_saved != self.step:
            self.save_checkpoint()
        self.checkpointer.wait()
        if self.logger is not None:
            self.logger.close()
        fabric.barrier()
        # last: requeueing makes SLURM end this job (SIGTERM, then SIGKILL) while the queue holds it again
        if self.time_limit and fabric.global_rank == 0 and requeue_wanted(args.requeue_on_timeout):
            print(requeue_slurm_job(), flush=True)

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

    # ---- signals ----
    def _install_signal_handlers(self) -> dict:
        def handler(signum, frame):  # only set a flag: the loop acts on it at the step boundary, on every rank
            self.stop_signal = signal.Signals(signum).name

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}

    def _stop_requested(self) -> bool:
        """True on every rank, after the same step, when any rank got SIGTERM/SIGINT/SIGUSR1: at most one step after
        the signal's own step, whatever log_interval is, so the checkpoint is written inside a launcher's grace
        period. Each step's flag (2 for SIGUSR1, which also sets `time_limit`) is all-reduced on a CPU (gloo) group
        without waiting; the next step waits for it, long done by then: no device tensor, no GPU sync, no stall on
        the other ranks."""
        import torch.distributed as dist

        code = 0.0 if self.stop_signal is None else 2.0 if self.stop_signal == "SIGUSR1" else 1.0
        if self.fabric.world_size == 1:
            self.time_limit = code == 2
            return code > 0
        if self._stop_group is None:
            self._stop_group = dist.new_group(backend="gloo")
        stop = False
        if self._stop_work is not None:
            self._stop_work.wait()
            stop, self.time_limit = bool(self._stop_flag.item() > 0), bool(self._stop_flag.item() == 2)
        self._stop_flag = torch.tensor([code])
        self._stop_work = dist.all_reduce(self._stop_flag, op=dist.ReduceOp.MAX, group=self._stop_group,
                                          async_op=True)
        return stop

    # ---- checkpoints ----
    def _state(self) -> dict[str, Any]:
        gather = self.checkpointer.gather
        return {"model": self.model, "optimizer": self.optimizer, "step": self.step, "tokens_seen": self.tokens_seen,
                "train_dataloader": gather(self.train_loader.state_dict()), "rng": gather(rng_state()),
                "world_size": self.fabric.world_size, "model_config": self.config.to_dict(),
                "optimizer_name": self.args.optimizer}

    def save_checkpoint(self, background: bool = False) -> Path:
        return self.checkpointer.save(self.step, self._state(), self.config, background)

    def _load_checkpoint(self, path: Path) -> None:
        state = self.checkpointer.load(path, {"model": self.model, "optimizer": self.optimizer, "step": 0,
                                              "tokens_seen": 0, "train_dataloader": None, "rng": None})
        rank = self.fabric.global_rank
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        if len(state["rng"]) == self.fabric.world_size:
            self.train_loader.load_state_dict(state["train_dataloader"][rank])
            set_rng_state(state["rng"][rank])
        else:  # another world size: any rank's loader state places every rank (all handed out the same count);
            self.train_loader.load_state_dict(state["train_dataloader"][0])  # RNG streams stay as seeded


def describe_accelerators(device: torch.device, precision: str, kernels: bool) -> str:
    """The start-up line naming the attention backend and why (e.g. "attention: cudnn (auto on sm90)"), plus the
    SwiGLU with kernels on. Deciding runs each optional backend's probe once, before any step is compiled."""
    if device.type != "cuda":  # the model takes SDPA on the CPU (and lit_gpt.kernels needs triton to import)
        return "attention: sdpa (cpu)"
    from lit_gpt.kernels.attention import describe_attention
    from lit_gpt.kernels.swiglu import describe_swiglu

    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision.split("-")[0], torch.float32)
    line = describe_attention(device, dtype)
    return f"{line} | {describe_swiglu()}" if kernels else line


def fault_injection(step: int, rank: int) -> None:
    """Test hooks, right after optimizer step k: LIT_GPT_KILL_AFTER_STEP=k makes every rank SIGKILL itself (a hard
    crash, no chance to clean up); LIT_GPT_SIGTERM_AFTER_STEP=k sends SIGTERM to rank 0 only (a preemption notice
    the other ranks must learn about). Used to prove that resuming reproduces an uninterrupted run."""
    if os.environ.get("LIT_GPT_KILL_AFTER_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("LIT_GPT_SIGTERM_AFTER_STEP") == str(step) and rank == 0:
        os.kill(os.getpid(), signal.SIGTERM)
