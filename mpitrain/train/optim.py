"""Optimizers (AdamW, SGD) with weight-decay groups, and learning-rate schedules
(linear warm-up, then linear or cosine decay to 0, or constant)."""
from __future__ import annotations

import math

import torch

from ..errors import UsageError

NO_DECAY_MARKERS = ("bias", "LayerNorm", "layer_norm", "norm.weight", "ln.weight", "ln_1.", "ln_2.", "ln_f.")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("linear", "cosine", "constant")


def decays(name: str) -> bool:
    """Weight decay applies to weight matrices, not to biases and normalisation scales."""
    return not any(marker in name for marker in NO_DECAY_MARKERS)


def decay_groups(named_params, weight_decay: float) -> list[dict]:
    named = [(n, p) for n, p in named_params if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if decays(n)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def make_adamw(named_params, lr: float, weight_decay: float, betas=(0.9, 0.999),
               eps: float = 1e-8) -> torch.optim.AdamW:
    return torch.optim.AdamW(decay_groups(named_params, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
                             foreach=True)


def make_optimizer(named_params, train_cfg) -> torch.optim.Optimizer:
    """The optimizer a job's [train] section asks for, over (global name, parameter) pairs."""
    return optimizer_over(decay_groups(named_params, train_cfg.weight_decay), train_cfg)


def optimizer_over(groups: list[dict], train_cfg) -> torch.optim.Optimizer:
    """The [train] section's optimizer over given parameter groups (each with its
    `weight_decay`; a group may be empty)."""
    t = train_cfg
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps, foreach=True)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, foreach=True)
    raise UsageError(f"[train] optimizer = {t.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")


def lr_factor(kind: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate at `step` (0-based)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise UsageError(f"[train] schedule = {kind!r}; use one of {', '.join(SCHEDULES)}")


def make_schedule(optimizer, kind: str, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(kind, step, total_steps,
                                                                               warmup_steps))


def linear_schedule(optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LR rises linearly to its peak over `warmup_steps`, then falls linearly to 0 at `total_steps`
    (the schedule of transformers' get_linear_schedule_with_warmup)."""
    return make_schedule(optimizer, "linear", total_steps, warmup_steps)
