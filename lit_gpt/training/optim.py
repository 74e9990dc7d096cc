"""The optimizer and the learning-rate schedule (AdamW, linear warm-up then cosine: the TinyLlama/MicroLlama recipe)."""

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


def max_steps(args: TrainArgs, tokens_per_step: int) -> int:
    limits = [s for s in (args.max_steps, args.max_tokens and math.ceil(args.max_tokens / tokens_per_step)) if s]
    if not limits:
        raise TrainError("set --max_steps or --max_tokens")
    return min(limits)


def make_optimizer(model: nn.Module, args: TrainArgs, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only; norms and the embedding too when decay_norms_and_embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exempt = p.ndim < 2 or name.startswith("embed.")
        (no_decay if exempt and not args.decay_norms_and_embeddings else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.beta1, args.beta2),
                             fused=device.type == "cuda")
