"""Forward-only pipeline execution (evaluation, prediction).

Each stage runs its layers on every micro-batch in order, receiving activations
from the previous stage and sending its outputs to the next; nothing is kept
for backward. Sends are non-blocking, so stage s works on micro-batch i+1 while
micro-batch i travels on. The last stage returns what `collect` makes of each
micro-batch's output (e.g. argmax predictions), every other stage an empty list.
"""
from __future__ import annotations

import torch

from ..comm.p2p import Recv, Send


@torch.no_grad()
def forward_only(stage, p2p, microbatches, collect=lambda out, mb: out) -> list:
    """`stage`: this rank's pipeline Stage; `p2p`: a P2P over its pipeline group;
    `microbatches`: list of input tuples (used by the first stage; other stages only
    need its length). Returns ``[collect(output, mb), ...]`` on the last stage."""
    n = len(microbatches)
    results = []
    was_training = stage.training
    stage.eval()
    try:
        for mb in range(n):
            if stage.is_first:
                inputs = microbatches[mb]
                inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
                inputs = tuple(t.to(stage.device) if torch.is_tensor(t) else t for t in inputs)
                received = None
            else:
                received = p2p.exchange(recvs=[Recv(stage.index - 1, "act", mb, what=f"stage {stage.index - 1}",
                                                    of=n)])[0]
                inputs = received
            out = stage(*inputs, mb=mb)
            if stage.is_last:
                results.append(collect(out[0] if len(out) == 1 else out, mb))
            else:
                p2p.exchange(sends=[Send(stage.index + 1, "act", mb, list(out), n)])
            if received is not None:
                for t in received:
                    p2p.release(t)
        p2p.flush()
    finally:
        stage.train(was_training)
    return results
