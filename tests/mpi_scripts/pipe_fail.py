"""A pipeline whose middle stage fails; the whole job must end (no hang).

--mode shape: stage 1's layer expects 10 features but receives 24 (every micro-batch).
--mode raise: stage 1's layer raises on its third call (micro-batch 2).
--mode usage: stage 1's layer raises a UsageError on micro-batch 2.
--mode count: the last stage is given one micro-batch more than the others.
"""
import argparse

import torch
from mpi4py import MPI
from torch import nn

from pipe_model import Dense, Head, TokenLoss, microbatches, sequences

from mpitrain.errors import UsageError
from mpitrain.layers import LayerSpec
from mpitrain.pipeline import PipelineEngine, Stage, partition


class Flaky(nn.Module):
    def __init__(self, fail_at: int, usage: bool):
        super().__init__()
        self.lin = nn.Linear(24, 24)
        self.calls, self.fail_at, self.usage = 0, fail_at, usage

    def forward(self, h, mask):
        self.calls += 1
        if self.calls == self.fail_at + 1:
            if self.usage:
                raise UsageError("flaky layer: bad input; fix the data")
            raise ValueError("flaky layer broke")
        return self.lin(h), mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["shape", "raise", "usage", "count"], required=True)
    ap.add_argument("--schedule", default="1f1b")
    args = ap.parse_args()
    if args.mode in ("shape", "count"):
        middle = LayerSpec("bad", lambda: Dense(10 if args.mode == "shape" else 24, 24))
    else:
        fail_at = 2
        middle = LayerSpec("bad", lambda: Flaky(fail_at, args.mode == "usage"))
    specs = [LayerSpec("embed", lambda: Dense(8, 24)), middle, LayerSpec("head", lambda: Head(24, 5))]
    comm = MPI.COMM_WORLD
    part = partition(specs, comm.Get_size(), "uniform")
    stage = Stage(specs, part, comm.Get_rank())
    engine = PipelineEngine(stage, comm, TokenLoss() if stage.is_last else None, args.schedule)
    seqs = sequences(0, 8)
    m = 8 if args.mode == "count" and stage.is_last else 4
    engine.step(microbatches(seqs, m), sum(len(y) for _, y in seqs))
    print(f"PIPE-UNEXPECTED rank {comm.Get_rank()} finished", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
