"""torch.distributed.pipelining on the benchmark's stages (gloo), for comparison."""
from __future__ import annotations

import socket
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn


def ensure_process_group(comm) -> None:
    """A gloo process group over the ranks of `comm`, rendezvous through MPI."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    names = comm.allgather(socket.gethostname())
    host, port = None, None
    if comm.Get_rank() == 0:
        host = "127.0.0.1" if len(set(names)) == 1 else names[0]
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
    host, port = comm.bcast((host, port), root=0)
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=comm.Get_rank(),
                            world_size=comm.Get_size())


class _Metered(nn.Module):
    """Runs `inner`, counting saved activations while a meter is set."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.meter = None

    def forward(self, x):
        with self.meter.track() if self.meter is not None else nullcontext():
            return self.inner(x)


class TorchRunner:
    def __init__(self, stage, module: nn.Module, schedule: str, num_microbatches: int, x, y,
                 normalizer: float, comm, meter_cls):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        ensure_process_group(comm)
        self.first, self.last = stage.is_first, stage.is_last
        self.module = _Metered(module)
        self.meter_cls = meter_cls
        self.x, self.y = x, y
        self.pstage = PipelineStage(self.module, stage.index, stage.num_stages, torch.device("cpu"))

        def loss_fn(out, target):
            return F.mse_loss(out, target, reduction="sum") / normalizer

        cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
        self.schedule = cls(self.pstage, num_microbatches, loss_fn=loss_fn, scale_grads=False)

    def step(self):
        if self.first and self.last:
            self.schedule.step(self.x, target=self.y)
        elif self.first:
            self.schedule.step(self.x)
        elif self.last:
            self.schedule.step(target=self.y)
        else:
            self.schedule.step()

    def zero(self):
        for p in self.module.parameters():
            p.grad = None

    def peak_memory(self) -> int:
        self.module.meter = self.meter_cls(exclude=list(self.module.parameters()))
        self.step()
        self.zero()
        peak, self.module.meter = self.module.meter.peak, None
        return peak

    def close(self):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
