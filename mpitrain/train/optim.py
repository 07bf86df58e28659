"""AdamW with weight-decay groups and a linear warm-up / linear decay schedule."""
from __future__ import annotations

import torch

NO_DECAY_MARKERS = ("bias", "LayerNorm", "layer_norm", "norm.weight", "ln.weight")


def decays(name: str) -> bool:
    """Weight decay applies to weight matrices, not to biases and normalisation scales."""
    return not any(marker in name for marker in NO_DECAY_MARKERS)


def make_adamw(named_params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    named = [(n, p) for n, p in named_params if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if decays(n)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, foreach=True)


def linear_schedule(optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LR rises linearly to its peak over `warmup_steps`, then falls linearly to 0 at `total_steps`
    (the schedule of transformers' get_linear_schedule_with_warmup)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
