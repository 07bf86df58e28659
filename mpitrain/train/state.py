"""The Trainer's state as a plain dict, with optimizer state under global
parameter names (never positions), so a later run can restore it on any layout:
each rank contributes the entries of the parameters it holds (with ZeRO-1 the
whole state of each, gathered over its data-parallel group: `dp/zero.py`).

    {"step": int, "epoch": int, "step_in_epoch": int,
     "optimizer": {"param_groups": [{...hyper-parameters, "params": [global names]}],
                   "state": {global name: {"exp_avg": Tensor, ...}}},
     "scheduler": {...}, "rng": {"torch": ByteTensor}}
"""
from __future__ import annotations

import torch

from ..errors import UsageError


def optimizer_state(optimizer: torch.optim.Optimizer, named_params, copy: bool = True) -> dict:
    """`optimizer.state_dict()` with parameter positions replaced by global names
    (`copy=False`: the live state tensors, for a caller that copies them itself)."""
    if hasattr(optimizer, "named_state"):  # ZeRO-1: gathered over the data-parallel group (collective)
        return optimizer.named_state()
    name_of = {id(p): n for n, p in named_params}
    groups, state = [], {}
    for group in optimizer.param_groups:
        names = [name_of[id(p)] for p in group["params"]]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": names})
        for n, p in zip(names, group["params"]):
            if p in optimizer.state:
                state[n] = {k: (v.detach().clone() if copy and torch.is_tensor(v) else v)
                            for k, v in optimizer.state[p].items()}
    return {"param_groups": groups, "state": state}


def load_optimizer_state(optimizer: torch.optim.Optimizer, named_params, saved: dict, copy: bool = True) -> None:
    """Restore `optimizer_state` output (entries of parameters not held here are ignored;
    every parameter held here must be present). `copy=False` adopts the given CPU
    tensors instead of copying them."""
    if hasattr(optimizer, "load_named_state"):  # ZeRO-1: this replica's segments of each state
        optimizer.load_named_state(saved)
        return
    name_of = {id(p): n for n, p in named_params}
    by_name = {n: g for g in saved["param_groups"] for n in g["params"]}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = name_of[id(p)]
            if name not in by_name:
                raise UsageError(f"trainer state: no optimizer entry for parameter {name!r}; the state "
                                 "belongs to another model")
            group.update({k: v for k, v in by_name[name].items() if k != "params"})
            if name in saved["state"]:
                optimizer.state[p] = {k: _placed(v, p.device, copy) for k, v in saved["state"][name].items()}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the state tensors this rank's optimizer holds (with ZeRO-1, its shard)."""
    return sum(v.numel() * v.element_size() for st in optimizer.state.values() for v in st.values()
               if torch.is_tensor(v))


def _placed(value, device, copy: bool = True):
    """Per-element state goes to the parameter's device; scalars (Adam's `step`) stay put."""
    if not torch.is_tensor(value):
        return value
    if value.dim():
        return value.to(device, copy=copy)
    return value.clone() if copy else value
