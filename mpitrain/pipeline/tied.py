"""Tied weights: parameters declared to be one weight, across stages or within one.

Declared as groups of global parameter names, e.g. an input embedding on the
first stage and an output projection on the last::

    tied = [("embed.weight", "head.weight")]

At set-up the group's first parameter (lowest stage, first listed) is copied to
every member, so they start equal. After backward, `reduce_grads` sums the
members' gradients -- locally, then across the owning stages with an all-reduce
on a communicator of just those stages -- and gives every member the sum, so
each copy takes the same optimizer step, exactly like one shared weight.
`duplicates` lists the copies to leave out of a global gradient norm.
"""
from __future__ import annotations

import torch

from ..errors import UsageError
from .partition import Partition


def owning_layer(param_name: str, layer_names: list[str]) -> int | None:
    """Index of the layer whose name is the longest dotted prefix of `param_name`."""
    best = None
    for i, name in enumerate(layer_names):
        if param_name.startswith(name + ".") and (best is None or len(name) > len(layer_names[best])):
            best = i
    return best


class _Group:
    def __init__(self, names, stages, local, comm, primary_here):
        self.names = names            # all member names
        self.stages = stages          # owning stages, sorted
        self.local = local            # [(name, param)] on this stage
        self.comm = comm              # communicator of the owning stages (None if one stage)
        self.primary_here = primary_here


class TiedWeights:
    def __init__(self, groups, named_params, partition: Partition, stage_index: int, pp_comm=None):
        """groups: iterable of tuples of global parameter names. named_params: this
        stage's (global name, parameter) pairs, duplicates included. Collective over
        `pp_comm` (every stage must pass the same groups)."""
        params = dict(named_params)
        self.groups: list[_Group] = []
        for group in groups:
            names = tuple(group)
            if len(names) < 2 or len(set(names)) != len(names):
                raise UsageError(f"tied weights {names}: a group needs two or more distinct parameter names")
            member_stages = []
            for name in names:
                layer = owning_layer(name, partition.names)
                if layer is None:
                    raise UsageError(f"tied weights: {name!r} names no layer of the model; use "
                                     "'<layer name>.<parameter name>'")
                member_stages.append(partition.stage_of(layer))
            local = []
            for name, s in zip(names, member_stages):
                if s == stage_index:
                    if name not in params:
                        raise UsageError(f"tied weights: layer of {name!r} (stage {s}) has no such "
                                         f"parameter; check the name")
                    local.append((name, params[name]))
            stages = sorted(set(member_stages))
            comm = None
            if len(stages) > 1:
                if pp_comm is None:
                    raise UsageError("tied weights span stages but no pipeline communicator was given")
                from mpi4py import MPI
                color = 0 if stage_index in stages else MPI.UNDEFINED
                comm = pp_comm.Split(color, stage_index)
                comm = None if comm == MPI.COMM_NULL else comm
            first = min(range(len(names)), key=lambda i: (member_stages[i], i))
            primary_here = member_stages[first] == stage_index
            local.sort(key=lambda item: 0 if item[0] == names[first] else 1)
            self.groups.append(_Group(names, stages, local, comm, primary_here))

    def sync_values(self) -> None:
        """Give every member the value of its group's first parameter."""
        for g in self.groups:
            if not g.local:
                continue
            source = g.local[0][1]
            if g.comm is not None:
                shape = g.comm.bcast(tuple(source.shape) if g.primary_here else None, root=0)
                for name, p in g.local:
                    if tuple(p.shape) != shape:
                        raise UsageError(f"tied weights: {name!r} has shape {list(p.shape)} but "
                                         f"{g.names[0]!r} has {list(shape)}; tied parameters must match")
                buf = source.detach().to("cpu", torch.float64).contiguous()
                g.comm.Bcast(buf.numpy(), root=0)
                with torch.no_grad():
                    source.copy_(buf.to(source.device, source.dtype))
            with torch.no_grad():
                for name, p in g.local[1:]:
                    if p.shape != source.shape:
                        raise UsageError(f"tied weights: {name!r} has shape {list(p.shape)} but "
                                         f"{g.local[0][0]!r} has {list(source.shape)}; tied parameters must match")
                    if p is not source:
                        p.copy_(source)

    def reduce_grads(self) -> None:
        """Every member's gradient becomes the sum over all members of its group."""
        for g in self.groups:
            if not g.local:
                continue
            distinct = {id(p): p for _, p in g.local}.values()
            total = None
            for p in distinct:
                if p.grad is not None:
                    total = p.grad.detach().clone() if total is None else total + p.grad
            if total is None:
                total = torch.zeros_like(g.local[0][1])
            if g.comm is not None:
                buf = total.to("cpu", torch.float64).contiguous()
                from mpi4py import MPI
                g.comm.Allreduce(MPI.IN_PLACE, buf.numpy(), op=MPI.SUM)
                total = buf.to(total.device, total.dtype)
            for p in distinct:
                if p.grad is not None and p.grad.shape == total.shape:
                    p.grad.copy_(total)  # in place: p.grad may be a view a gradient averager owns
                else:
                    p.grad = total.clone()

    def duplicates(self) -> set[int]:
        """ids of local parameters that are copies of a weight counted elsewhere."""
        dup = set()
        for g in self.groups:
            for i, (_, p) in enumerate(g.local):
                if i > 0 or not g.primary_here:
                    dup.add(id(p))
            if g.primary_here and g.local:
                dup.discard(id(g.local[0][1]))
        return dup

    def free(self) -> None:
        for g in self.groups:
            if g.comm is not None:
                g.comm.Free()
                g.comm = None
