"""The optimizer (AdamW, the TinyLlama/MicroLlama recipe, or Muon + AdamW: training/muon.py) and the learning-rate
schedule (linear warm-up, then cosine, or constant then a decay: warmup-stable-decay)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from lit_gpt.training.args import TrainArgs
from lit_gpt.utils import TrainError


def cosine_lr(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up to `lr`, then cosine down to `min_lr`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def wsd_lr(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int, decay_start: int,
           shape: str = "1-sqrt") -> float:
    """Warmup-stable-decay: linear warm-up to `lr`, constant until `decay_start`, then down to `min_lr` at
    `max_steps`, in the shape 1 - sqrt(progress) ("1-sqrt", the better one in Hagele et al. 2024) or 1 - progress."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step <= decay_start:  # progress 0: exactly lr (min_lr + (lr - min_lr) may round)
        return lr
    progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    remaining = 1 - math.sqrt(progress) if shape == "1-sqrt" else 1 - progress
    return min_lr + (lr - min_lr) * remaining


def decay_start(args: TrainArgs, max_steps: int) -> int:
    """wsd: the step the decay starts at (--decay_start_step, else the last decay_fraction of the run)."""
    if args.decay_start_step is not None:
        return args.decay_start_step
    return max_steps - round(args.decay_fraction * max_steps)


def check_schedule(args: TrainArgs, max_steps: int) -> None:
    if args.muon_lr is not None and not args.learning_rate:
        raise TrainError("--muon_lr follows the schedule of --learning_rate as a multiple of it: learning_rate "
                         "must be > 0")
    if args.lr_schedule != "wsd":
        return
    if not 0 < args.decay_fraction <= 1:
        raise TrainError(f"decay_fraction {args.decay_fraction} must be in (0, 1]")
    start = decay_start(args, max_steps)
    if not args.warmup_steps <= start < max_steps:
        raise TrainError(f"the wsd decay would start at step {start}: it must lie between warmup_steps "
                         f"{args.warmup_steps} and max_steps {max_steps} (set --decay_start_step or --max_steps)")


def scheduled_lr(step: int, args: TrainArgs, max_steps: int) -> float:
    """The (AdamW) learning rate of optimizer step `step` (0-based) under --lr_schedule."""
    if args.lr_schedule == "wsd":
        return wsd_lr(step, args.learning_rate, args.min_lr, args.warmup_steps, max_steps,
                      decay_start(args, max_steps), args.decay_shape)
    return cosine_lr(step, args.learning_rate, args.min_lr, args.warmup_steps, max_steps)


def set_learning_rates(optimizer: torch.optim.Optimizer, step: int, args: TrainArgs, max_steps: int) -> float:
    """Sets every param group's lr for `step`: the schedule's, and the Muon groups' muon_lr scaled by the same
    factor. Returns the AdamW lr (the one logged)."""
    lr = scheduled_lr(step, args, max_steps)
    muon_lr = lr if args.muon_lr is None else lr * args.muon_lr / args.learning_rate  # check_schedule: lr > 0
    for group in optimizer.param_groups:
        group["lr"] = muon_lr if group.get("muon") else lr
    return lr


def max_steps(args: TrainArgs, tokens_per_step: int) -> int:
    limits = [s for s in (args.max_steps, args.max_tokens and math.ceil(args.max_tokens / tokens_per_step)) if s]
    if not limits:
        raise TrainError("set --max_steps or --max_tokens")
    return min(limits)


def make_optimizer(model: nn.Module, args: TrainArgs, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only; norms and the embedding too when decay_norms_and_embeddings.
    --optimizer muon: the Blocks' matrices go to Muon instead (training/muon.py), the rest stays with AdamW."""
    named = list(model.named_parameters())
    muon_groups = []
    if args.optimizer == "muon":
        from lit_gpt.training.muon import muon_param_groups

        named, muon_groups = muon_param_groups(model)
    decay, no_decay = [], []
    for name, p in named:
        exempt = p.ndim < 2 or name.startswith("embed.")
        (no_decay if exempt and not args.decay_norms_and_embeddings else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = dict(lr=args.learning_rate, betas=(args.beta1, args.beta2), fused=device.type == "cuda")
    if args.optimizer == "muon":
        from lit_gpt.training.muon import MuonAdamW

        return MuonAdamW(groups, muon_groups, muon_lr=args.muon_lr or args.learning_rate,
                         muon_weight_decay=args.weight_decay if args.muon_weight_decay is None
                         else args.muon_weight_decay,
                         muon_momentum=args.muon_momentum, adjust_lr_fn=args.muon_adjust_lr, **adamw)
    return torch.optim.AdamW(groups, **adamw)
