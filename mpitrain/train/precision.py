"""Mixed precision: `[train] precision = "fp32" | "bf16" | "fp16"`.

- **bf16** (CPU and CUDA): each micro-batch's forward runs under
  ``torch.autocast(dtype=torch.bfloat16)`` on every stage (the engine's forward
  context, with the dropout scope). Parameters, gradients and optimizer state stay
  fp32 -- autocast casts inside the ops that gain from it (matmuls) -- and the loss
  is computed in fp32 outside autocast. bfloat16 has fp32's exponent range, so no
  loss scaling is needed. Activations that cross a stage boundary keep the dtype
  the layer produced (bf16 after a linear layer; fp32 after a residual sum or a
  LayerNorm on fp32 inputs); gradients are reduced in fp32, or in bf16/fp16 on the
  wire with ``[comm] compress``.
- **fp16** (CUDA only): autocast to float16 plus dynamic loss scaling
  (`LossScaler`): the loss is multiplied by the scale before backward (the engine's
  ``grad_scale``), gradients are divided by it before clipping; a step whose
  gradients hold an inf or NaN on any rank is skipped on every rank and the scale
  halved; after ``loss_scale_growth_interval`` good steps it doubles. On a CPU
  device fp16 is refused at start (`check_device`): use bf16.

Evaluation runs in fp32.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device, precision: str):
    """A context manager for one forward at `precision` on `device` (fp32: does nothing)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def check_device(cfg, device) -> None:
    """fp16 needs CUDA (a one-line ConfigError otherwise)."""
    if cfg.train.precision == "fp16" and torch.device(device).type != "cuda":
        raise ConfigError(f"{cfg.source}: [train] precision = fp16 needs CUDA (dynamic loss scaling); "
                          "use bf16 on CPU")


class LossScaler:
    """Dynamic loss scale: `update(found_inf)` after every step backs off on an
    overflow and grows after `growth_interval` steps without one. Every rank holds
    the same scale as long as each update gets the agreed flag."""

    def __init__(self, init_scale: float = 65536.0, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, min_scale: float = 2.0 ** -24):
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval, self.min_scale = int(growth_interval), float(min_scale)
        self.good_steps = 0     # steps without an overflow since the last change of scale
        self.overflows = 0      # steps skipped for an overflow, in all

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self.good_steps = 0
            self.overflows += 1
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "overflows": self.overflows}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.overflows = int(state.get("overflows", 0))


def make_scaler(train) -> LossScaler | None:
    """The `[train]` section's loss scaler (fp16), else None."""
    if train.precision != "fp16":
        return None
    return LossScaler(train.loss_scale_init, growth_interval=train.loss_scale_growth_interval)


def grads_overflowed(grads, world) -> bool:
    """Whether any of `grads` on any rank holds an inf or NaN (collective over `world`)."""
    from mpi4py import MPI

    flags = [torch.isfinite(g).all() for g in grads]
    local = bool(flags) and not bool(torch.stack(flags).all())
    return bool(world.allreduce(int(local), op=MPI.MAX))


def unscale_gradients(model) -> bool:
    """After a step's backward, before clipping. Without a loss scaler: False, no
    communication. With one: divide the gradients by the scale, agree over every
    rank whether any overflowed, update the scale; True = skip this optimizer step
    (on every rank: the flag is agreed)."""
    scaler = getattr(model, "scaler", None)
    if scaler is None:
        return False
    grads = [p.grad for _, p in model.named_parameters() if p.grad is not None]
    for g in grads:
        g.div_(scaler.scale)
    found_inf = grads_overflowed(grads, model.topo.world)
    scaler.update(found_inf)
    return found_inf
